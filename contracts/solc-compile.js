// Standard-JSON bridge to the pinned npm `solc`: reads the compiler input on stdin, writes
// {"version": ..., "output": ...} on stdout. Imports resolve from node_modules (OpenZeppelin).
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

function findImports(unitName) {
  const file = path.join(__dirname, 'node_modules', unitName);
  if (!file.startsWith(path.join(__dirname, 'node_modules') + path.sep)) {
    return { error: 'import outside node_modules: ' + unitName };
  }
  try {
    return { contents: fs.readFileSync(file, 'utf8') };
  } catch (err) {
    return { error: 'not found: ' + unitName };
  }
}

const input = fs.readFileSync(0, 'utf8');
const output = JSON.parse(solc.compile(input, { import: findImports }));
process.stdout.write(JSON.stringify({ version: solc.version(), output }));
