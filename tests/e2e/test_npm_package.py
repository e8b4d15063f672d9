"""static/ is the npm package hubbub-client: packed as npm would publish it and installed
(offline) into a default npm project, which is CommonJS, it imports as an ES module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hubbub import __version__

STATIC = Path(__file__).resolve().parents[2] / "static"
USE = """
import { CLOSE_CODES, Hubbub, backoff } from "hubbub-client";
import { createUseWebSocket } from "hubbub-client/react";
console.log(JSON.stringify({ hubbub: typeof Hubbub, restart: CLOSE_CODES[1012].name,
                             floor: backoff(0, 500, 20000, () => 0), react: typeof createUseWebSocket }));
"""


def run(*command: str, cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_the_packed_client_installs_and_imports_in_a_default_npm_project(tmp_path: Path) -> None:
    packed = json.loads(run("npm", "pack", "--json", "--pack-destination", str(tmp_path), cwd=STATIC))[0]
    assert sorted(f["path"] for f in packed["files"]) == [
        "hubbub.d.ts", "hubbub.js", "package.json", "protocol.json", "react.js"]  # no demo page
    assert packed["version"] == __version__
    project = tmp_path / "app"
    project.mkdir()
    run("npm", "init", "-y", cwd=project)
    assert json.loads((project / "package.json").read_text()).get("type", "commonjs") == "commonjs"
    tarball = str(tmp_path / packed["filename"])
    run("npm", "install", "--offline", "--no-audit", "--no-fund", tarball, cwd=project)

    (project / "use.mjs").write_text(USE)
    assert json.loads(run("node", "use.mjs", cwd=project)) == {
        "hubbub": "function", "restart": "restarting", "floor": 500, "react": "function"}
    # A CommonJS file of the same project reaches it with import().
    (project / "use.js").write_text('import("hubbub-client").then((m) => console.log(typeof m.Hubbub));')
    assert run("node", "use.js", cwd=project).strip() == "function"
