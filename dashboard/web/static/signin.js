// Sign-in with an injected Ethereum wallet (EIP-1193, e.g. a browser extension): the server
// prepares the EIP-4361 message with a fresh nonce, the wallet signs it, the server checks it.
(function () {
  "use strict";
  var button = document.getElementById("wallet-signin");
  var status = document.getElementById("wallet-status");
  var token = document.querySelector('meta[name="ipsx-signin-token"]').content;
  if (!button) return;

  function post(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) throw new Error(data.detail || response.statusText);
        return data;
      });
    });
  }
  function hex(text) {
    return "0x" + Array.from(new TextEncoder().encode(text), function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }

  button.addEventListener("click", function () {
    var wallet = window.ethereum;
    if (!wallet) {
      status.textContent = "No wallet found in this browser: install one, or sign in with an API key.";
      return;
    }
    button.disabled = true;
    status.textContent = "Asking your wallet…";
    var address;
    wallet.request({ method: "eth_requestAccounts" })
      .then(function (accounts) {
        address = accounts[0];
        return post("/signin/siwe/message", { address: address });
      })
      .then(function (prepared) {
        status.textContent = "Sign the message in your wallet…";
        return wallet.request({ method: "personal_sign", params: [hex(prepared.message), address] })
          .then(function (signature) { return post("/signin/siwe", { message: prepared.message, signature: signature }); });
      })
      .then(function (done) { window.location.assign(done.next); })
      .catch(function (error) {
        status.textContent = "Sign-in failed: " + (error && error.message ? error.message : error);
        button.disabled = false;
      });
  });
})();
