"""The wheel is the service: installed outside the checkout, it migrates, validates, stores and serves its page."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import aiohttp

from tests.support.client import get_json, post_message
from tests.support.db import wait_rows
from tests.support.isolation import Isolated
from tests.support.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def install_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the checkout's files and install it in a fresh virtualenv; its python.

    The project's dependencies come from our virtualenv's site-packages, added as a plain path: its editable
    install of this checkout (a .pth of its own) is not read, so only the wheel's copy of the code is found;
    the test checks that it is.
    """
    source = tmp / "source"
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        source,
        "-w",
        tmp / "dist",
        cwd=tmp,
    )
    [wheel] = (tmp / "dist").glob("somaagent01-*.whl")
    env = tmp / "env"
    # the new virtualenv's own pip (ensurepip, offline) installs it: ours would first uninstall this checkout's
    # editable install from our virtualenv, taking it to be the same distribution
    run(sys.executable, "-m", "venv", env, cwd=tmp)
    run(env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "somaagent01-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env / "bin" / "python"


async def test_a_worker_started_from_the_installed_wheel_serves_and_stores(iso: Isolated, tmp_path: Path) -> None:
    python = await asyncio.to_thread(install_wheel, tmp_path)
    elsewhere = tmp_path / "run"
    await asyncio.to_thread(elsewhere.mkdir)
    found = await asyncio.to_thread(
        run,
        python,
        "-c",
        "import app, views, tools, app.data as d; print(app.__file__, d.folder('schemas'))",
        cwd=elsewhere,
    )
    assert str(ROOT) not in found and str(tmp_path / "env") in found, f"not the installed copy: {found}"

    # the migrations ship too: this test's database, rolled back and migrated again from the installed copy
    env = iso.env()
    rolled = await asyncio.to_thread(run, python, "-m", "tools.migrate", "rollback", cwd=elsewhere, env=env)
    applied = await asyncio.to_thread(run, python, "-m", "tools.migrate", cwd=elsewhere, env=env)
    assert "migrations: 1 rolled back" in rolled and "migrations: 1 applied" in applied, (rolled, applied)

    worker = await Worker(
        env, ROOT / "artifacts" / "logs" / f"wheel-{iso.tag}.log", python=python, cwd=elsewhere
    ).started()
    try:
        await worker.wait_http()
        status, answer = await post_message(worker.url, {"session_id": "wheel-1", "message": "from the wheel"})
        assert status == 202, answer
        status, refused = await post_message(worker.url, {"session_id": "wheel-1"})  # no message: the schema says
        assert status == 422 and refused["error"]["code"] == "validation_failed", refused
        rows = await wait_rows(env["SOMA_POSTGRES_DSN"], "SELECT payload FROM session_events", (), 1)
        assert rows[0]["payload"]["message"] == "from the wheel"
        async with aiohttp.ClientSession() as http, http.get(worker.url + "/") as page:
            assert page.status == 200 and "<html" in (await page.text()).lower()
        status, openapi = await get_json(worker.url, "/openapi.json")
        assert status == 200 and "/v1/session/message" in openapi["paths"]
    finally:
        await worker.stopped()
