"""The daemon serves its API with aiohttp's server alone: the client side (sessions,
connector, cookie jar) loads on first use, in the same ``aiohttp`` module, and
then works as usual. Each case runs in a fresh interpreter, since this process
has aiohttp loaded already."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def run_fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_server_import_leaves_the_client_unloaded():
    out = run_fresh("""
        import sys
        from engine.core import daemon
        web, make_app = daemon._import_web()
        assert web.Application and make_app
        client = sorted(m for m in ("aiohttp.client", "aiohttp.client_reqrep", "aiohttp.connector",
                                    "aiohttp.cookiejar") if m in sys.modules)
        print(client, "ssl" in sys.modules and sys.modules["aiohttp"].__version__)
    """)
    assert out.startswith("[] "), out


def test_first_client_use_runs_the_package_init():
    out = run_fresh("""
        import asyncio, os, sys
        from engine.core import daemon
        web, _ = daemon._import_web()
        import aiohttp
        from aiohttp import ClientTimeout          # a name of the package: loads it
        assert "aiohttp.client" in sys.modules
        assert aiohttp.ClientSession is sys.modules["aiohttp.client"].ClientSession
        assert aiohttp.web is web and aiohttp.hdrs.HOST == "Host"
        try:
            aiohttp.NoSuchName
        except AttributeError:
            pass
        else:
            raise AssertionError("a missing name must stay missing")
        assert os.environ.get("SSL_CERT_FILE") != os.devnull  # the store is visible again

        async def roundtrip():
            app = web.Application()
            app.router.add_get("/", lambda r: web.Response(text="pong"))
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            async with aiohttp.ClientSession(timeout=ClientTimeout(total=10)) as s:
                async with s.get(f"http://127.0.0.1:{port}/") as resp:
                    print(await resp.text())
            await runner.cleanup()
        asyncio.run(roundtrip())
    """)
    assert out.strip() == "pong"
