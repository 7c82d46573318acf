"""The dashboard's assets: the vendored Chart.js is the one its README names, and the theme
colours meet WCAG 2.1 contrast (4.5:1 for text, 3:1 for focus outlines and chart lines) in both
themes. No server needed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from dashboard.web.render import STATIC_DIR

CSS = (STATIC_DIR / "app.css").read_text()
VENDOR = STATIC_DIR / "vendor"


def _block(selector: str) -> dict[str, str]:
    """The custom properties set in the CSS rule for ``selector``."""
    found = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", CSS)
    assert found is not None, selector
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", found.group(1)))


LIGHT = _block(":root")
DARK = _block(':root[data-theme="dark"]')
DARK_BY_SYSTEM = _block(':root:not([data-theme="light"])')


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# (foreground, background, minimum ratio): text 4.5:1, non-text (focus ring, chart lines) 3:1.
PAIRS = [
    ("fg", "bg", 4.5), ("fg", "surface", 4.5), ("muted", "bg", 4.5), ("muted", "surface", 4.5),
    ("accent", "bg", 4.5), ("accent", "surface", 4.5), ("accent-fg", "accent", 4.5),
    ("danger-fg", "danger", 4.5), ("danger", "surface", 4.5), ("ok", "bg", 4.5), ("ok", "surface", 4.5),
    ("warn", "surface", 3.0), ("focus", "bg", 3.0), ("focus", "surface", 3.0),
    ("chart-1", "surface", 3.0), ("chart-2", "surface", 3.0),
]  # fmt: skip


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize(("fg", "bg", "minimum"), PAIRS)
def test_theme_colours_meet_wcag_contrast(theme: str, fg: str, bg: str, minimum: float) -> None:
    colours = LIGHT if theme == "light" else DARK
    ratio = contrast(colours[fg], colours[bg])
    assert ratio >= minimum, f"{theme}: --{fg} on --{bg} is {ratio:.2f}:1, needs {minimum}:1"


def test_the_dark_theme_is_the_same_by_choice_and_by_system_setting() -> None:
    assert DARK == DARK_BY_SYSTEM
    assert set(DARK) == set(LIGHT)


def test_focus_is_visible() -> None:
    assert re.search(r":focus-visible\s*\{\s*outline:\s*3px solid var\(--focus\)", CSS)


def test_the_vendored_chart_js_is_the_one_the_readme_names() -> None:
    readme = (VENDOR / "README.md").read_text()
    digest = hashlib.sha256((VENDOR / "chart.umd.min.js").read_bytes()).hexdigest()
    assert f"sha256: `{digest}`" in readme
    assert "| 4.6.1 |" in readme and "chart.js@4.6.1" in readme
    assert (VENDOR / "chart.js.LICENSE.md").read_text().startswith("The MIT License (MIT)")


def test_templates_label_every_control() -> None:
    """Every input and select in the templates has a label (by ``for``) or an aria-label."""
    templates = Path(STATIC_DIR.parent / "templates")
    for template in templates.glob("*.html"):
        text = template.read_text()
        labelled = set(re.findall(r'<label for="([^"]+)"', text))
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", text):
            if 'type="hidden"' in tag or "aria-label=" in tag:
                continue
            control = re.search(r'id="([^"]+)"', tag)
            assert control is not None, (template.name, tag)
            if "{{" in control.group(1):  # per-scope checkboxes: label for the same expression
                assert f'<label for="{control.group(1)}"' in text, (template.name, tag)
            else:
                assert control.group(1) in labelled, (template.name, tag)
