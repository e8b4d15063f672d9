"""The wheel a team installs: ``hubbub`` alone (no ``app`` to clash with theirs), carrying
the browser client and the demo page, and working inside a project of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import site
import socket
import sys
import textwrap
import zipfile
from pathlib import Path

import httpx

from hubbub import __version__
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 240.0


async def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(BUILD_TIMEOUT_S):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode(errors="replace")
    return out.decode()


async def test_wheel_installed_in_a_project_with_its_own_app_package_serves_the_client(
        tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves a build/ folder where it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("hubbub", "static"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    await run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
              str(source), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("hubbub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(name.startswith("app/") for name in names)  # no clash with a project's app
    assert {"hubbub/static/hubbub.js", "hubbub/static/index.html"} <= set(names)
    assert any(name.endswith("licenses/LICENSE") for name in names)

    # A fresh environment: the wheel installed in it, the dependencies seen from ours.
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = await run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp_path)
    fresh_site = Path(purelib.strip())
    await run(sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(fresh_site),
              str(wheel), cwd=tmp_path)
    (fresh_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text(textwrap.dedent(f"""
        from quart import Quart
        from hubbub import Hubbub, Settings

        app = Quart(__name__)
        rt = Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret={SECRET!r}))

        @app.get("/")
        async def home():
            return "the project's own app"
    """))
    where = await run(str(python), "-c", "import app, hubbub; print(hubbub.__file__)", cwd=project)
    assert Path(where.strip()).is_relative_to(fresh_site)  # the wheel's, not this checkout's

    sock = socket.create_server(("127.0.0.1", 0))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = await asyncio.create_subprocess_exec(
        str(python), "-m", "hypercorn", "--bind", f"fd://{sock.fileno()}", "app:app", cwd=project, env=env,
        pass_fds=(sock.fileno(),), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client, asyncio.timeout(30):
            while True:
                try:
                    client_js = await client.get("/rt/static/hubbub.js")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert client_js.status_code == 200
            assert client_js.content == (ROOT / "static" / "hubbub.js").read_bytes()
            assert (await client.get("/rt/")).status_code == 200  # the demo page, from the wheel
            assert (await client.get("/")).text == "the project's own app"
            assert (await client.get("/rt/healthz")).json()["version"] == __version__
    finally:
        server.terminate()
        async with asyncio.timeout(15):
            await server.wait()
