"""``engine``: a Docker-compatible command line client for the engine daemon.

The entry point is :func:`main`. Only this module, :mod:`.flags` and the module that
implements the chosen command are imported, so ``engine run`` loads neither the
daemon's dependencies nor the other commands. Commands are functions
``cmd(cli: Cli, argv: list[str]) -> int`` found through :data:`COMMANDS`.

Exit codes follow the docker CLI: the container's own code for ``run``/``start -a``/
``wait``; 125 for usage errors and for ``run``/``create`` failures the daemon reports;
126/127 when the container command cannot be invoked or is not found; 1 for other
errors.
"""
from __future__ import annotations

import os
import sys

from .flags import BOOL, STR, Flag, HelpRequested, Spec, UsageError, parse

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Callable
    from typing import IO, Any

    from engine.sdk.client import APIClient

__version__ = "0.1.0"
PROG = "engine"


class StatusError(Exception):
    """Stop the command with ``code``, printing ``message`` (if any) on stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Cli:
    """What every command gets: the API client (made on first use), the output
    streams, and helpers to parse flags and print."""

    def __init__(self, host: str | None = None, debug: bool = False,
                 out: IO[str] | None = None, err: IO[str] | None = None,
                 stdin: IO[Any] | None = None) -> None:
        self.host = host
        self.debug = debug
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stdin = stdin or sys.stdin
        self._api: APIClient | None = None
        self.command = ""

    @property
    def api(self) -> APIClient:
        if self._api is None:
            from engine.sdk.client import APIClient

            self._api = APIClient(self.host)
        return self._api

    def parse(self, spec: Spec, argv: list[str]) -> tuple[Any, list[str]]:
        self.command = spec.name
        try:
            return parse(spec, argv)
        except HelpRequested:
            self.out.write(spec.help_text(PROG))
            raise StatusError(0) from None

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")

    @property
    def out_bytes(self) -> IO[bytes]:
        """The binary stream under ``out`` (for container output and tar streams)."""
        self.out.flush()
        return getattr(self.out, "buffer", self.out)  # type: ignore[return-value]


# name -> (module, function, summary). Management commands map their subcommands.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("containers", "cmd_run", "Create and run a new container from an image"),
    "exec": ("attach", "cmd_exec", "Execute a command in a running container"),
    "ps": ("containers", "cmd_ps", "List containers"),
    "create": ("containers", "cmd_create", "Create a new container"),
    "start": ("attach", "cmd_start", "Start one or more stopped containers"),
    "stop": ("containers", "cmd_stop", "Stop one or more running containers"),
    "restart": ("containers", "cmd_restart", "Restart one or more containers"),
    "kill": ("containers", "cmd_kill", "Kill one or more running containers"),
    "rm": ("containers", "cmd_rm", "Remove one or more containers"),
    "logs": ("containers", "cmd_logs", "Fetch the logs of a container"),
    "attach": ("attach", "cmd_attach", "Attach local standard input, output, and error "
               "streams to a running container"),
    "cp": ("transfer", "cmd_cp", "Copy files/folders between a container and the local "
           "filesystem"),
    "inspect": ("containers", "cmd_inspect", "Return low-level information on objects"),
    "top": ("containers", "cmd_top", "Display the running processes of a container"),
    "pause": ("containers", "cmd_pause", "Pause all processes within one or more containers"),
    "unpause": ("containers", "cmd_unpause", "Unpause all processes within one or more "
                "containers"),
    "rename": ("containers", "cmd_rename", "Rename a container"),
    "wait": ("containers", "cmd_wait", "Block until one or more containers stop, then "
             "print their exit codes"),
    "port": ("containers", "cmd_port", "List port mappings or a specific mapping for the "
             "container"),
    "diff": ("containers", "cmd_diff", "Inspect changes to files or directories on a "
             "container's filesystem"),
    "export": ("transfer", "cmd_export", "Export a container's filesystem as a tar archive"),
    "stats": ("containers", "cmd_stats", "Display a live stream of container(s) resource "
              "usage statistics"),
    "images": ("images", "cmd_images", "List images"),
    "rmi": ("images", "cmd_rmi", "Remove one or more images"),
    "tag": ("images", "cmd_tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE"),
    "save": ("transfer", "cmd_save", "Save one or more images to a tar archive"),
    "load": ("transfer", "cmd_load", "Load an image from a tar archive or STDIN"),
    "import": ("transfer", "cmd_import", "Import the contents from a tarball to create a "
               "filesystem image"),
    "commit": ("images", "cmd_commit", "Create a new image from a container's changes"),
    "history": ("images", "cmd_history", "Show the history of an image"),
    "pull": ("images", "cmd_pull", "Download an image from a registry"),
    "push": ("images", "cmd_push", "Upload an image to a registry"),
    "login": ("images", "cmd_login", "Authenticate to a registry"),
    "logout": ("images", "cmd_logout", "Log out from a registry"),
    "events": ("system", "cmd_events", "Get real time events from the server"),
    "info": ("system", "cmd_info", "Display system-wide information"),
    "version": ("system", "cmd_version", "Show the engine version information"),
    "registry": ("system", "cmd_registry", "Run a registry server (serve, gc)"),
}

MANAGEMENT: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "container": ("Manage containers", {
        "ls": ("containers", "cmd_ps"), "list": ("containers", "cmd_ps"),
        "ps": ("containers", "cmd_ps"), "run": ("containers", "cmd_run"),
        "create": ("containers", "cmd_create"), "start": ("attach", "cmd_start"),
        "stop": ("containers", "cmd_stop"), "restart": ("containers", "cmd_restart"),
        "kill": ("containers", "cmd_kill"), "rm": ("containers", "cmd_rm"),
        "remove": ("containers", "cmd_rm"), "logs": ("containers", "cmd_logs"),
        "exec": ("attach", "cmd_exec"), "attach": ("attach", "cmd_attach"),
        "cp": ("transfer", "cmd_cp"), "inspect": ("containers", "cmd_container_inspect"),
        "top": ("containers", "cmd_top"), "pause": ("containers", "cmd_pause"),
        "unpause": ("containers", "cmd_unpause"), "rename": ("containers", "cmd_rename"),
        "wait": ("containers", "cmd_wait"), "port": ("containers", "cmd_port"),
        "diff": ("containers", "cmd_diff"), "export": ("transfer", "cmd_export"),
        "stats": ("containers", "cmd_stats"), "prune": ("containers", "cmd_container_prune"),
        "commit": ("images", "cmd_commit"),
    }),
    "image": ("Manage images", {
        "ls": ("images", "cmd_images"), "list": ("images", "cmd_images"),
        "rm": ("images", "cmd_rmi"), "remove": ("images", "cmd_rmi"),
        "tag": ("images", "cmd_tag"), "save": ("transfer", "cmd_save"),
        "load": ("transfer", "cmd_load"), "import": ("transfer", "cmd_import"),
        "history": ("images", "cmd_history"), "pull": ("images", "cmd_pull"),
        "push": ("images", "cmd_push"), "inspect": ("images", "cmd_image_inspect"),
        "prune": ("images", "cmd_image_prune"),
    }),
    "network": ("Manage networks", {
        "ls": ("objects", "cmd_network_ls"), "list": ("objects", "cmd_network_ls"),
        "create": ("objects", "cmd_network_create"), "rm": ("objects", "cmd_network_rm"),
        "remove": ("objects", "cmd_network_rm"),
        "inspect": ("objects", "cmd_network_inspect"),
        "connect": ("objects", "cmd_network_connect"),
        "disconnect": ("objects", "cmd_network_disconnect"),
        "prune": ("objects", "cmd_network_prune"),
    }),
    "volume": ("Manage volumes", {
        "ls": ("objects", "cmd_volume_ls"), "list": ("objects", "cmd_volume_ls"),
        "create": ("objects", "cmd_volume_create"), "rm": ("objects", "cmd_volume_rm"),
        "remove": ("objects", "cmd_volume_rm"),
        "inspect": ("objects", "cmd_volume_inspect"),
        "prune": ("objects", "cmd_volume_prune"),
    }),
    "plugin": ("Manage plugins", {
        "ls": ("objects", "cmd_plugin_ls"), "list": ("objects", "cmd_plugin_ls"),
        "inspect": ("objects", "cmd_plugin_inspect"),
        "install": ("objects", "cmd_plugin_install"),
        "enable": ("objects", "cmd_plugin_enable"),
        "disable": ("objects", "cmd_plugin_disable"),
        "rm": ("objects", "cmd_plugin_rm"), "remove": ("objects", "cmd_plugin_rm"),
        "upgrade": ("objects", "cmd_plugin_upgrade"),
        "create": ("objects", "cmd_plugin_create"), "push": ("objects", "cmd_plugin_push"),
        "set": ("objects", "cmd_plugin_set"),
    }),
    "system": ("Manage the engine", {
        "df": ("system", "cmd_system_df"), "prune": ("system", "cmd_system_prune"),
        "info": ("system", "cmd_info"), "events": ("system", "cmd_events"),
    }),
}

GLOBAL_FLAGS = [
    Flag("-H, --host", STR, "Daemon socket to connect to (unix:///path)"),
    Flag("-D, --debug", BOOL, "Enable debug mode"),
    Flag("-v, --version", BOOL, "Print version information and quit"),
    Flag("-l, --log-level", STR, "Set the logging level", hidden=True),
    Flag("--config", STR, "Location of client config files", hidden=True),
    Flag("-c, --context", STR, "Name of the context to use", hidden=True),
]

GLOBAL = Spec(PROG, "[OPTIONS] COMMAND", "A container engine client that speaks the "
              "Docker Engine API", GLOBAL_FLAGS, interspersed=False)


def usage() -> str:
    lines = [f"\nUsage:  {PROG} [OPTIONS] COMMAND\n",
             "A Docker-compatible client for the engine daemon\n", "Commands:"]
    lines += [f"  {name:<10}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Management Commands:"]
    lines += [f"  {name:<10}  {summary}" for name, (summary, _) in MANAGEMENT.items()]
    lines += ["", "Global Options:"]
    lines += [f.describe() for f in GLOBAL_FLAGS if not f.hidden]
    lines += [f"  {'    --help':<28} Print usage", "",
              f"Run '{PROG} COMMAND --help' for more information on a command.", ""]
    return "\n".join(lines)


def _lookup(argv: list[str]) -> tuple[Callable[[Cli, list[str]], int] | None, list[str], str]:
    """Find the command function for ``argv``; return it, its arguments, its name."""
    name = argv[0]
    if name in MANAGEMENT:
        summary, subs = MANAGEMENT[name]
        if len(argv) < 2 or argv[1] in ("--help", "-h", "help"):
            return None, [], name
        sub = subs.get(argv[1])
        if sub is None:
            raise UsageError(f"unknown command: {PROG} {name} {argv[1]}", name)
        module, func = sub
        rest, full = argv[2:], f"{name} {argv[1]}"
    elif name in COMMANDS:
        module, func, _ = COMMANDS[name]
        rest, full = argv[1:], name
    else:
        raise UsageError(f"'{name}' is not a {PROG} command.", "")
    # __import__ (not importlib) so that ``-X importtime`` reports the module too
    mod = __import__(f"{__name__}.{module}", fromlist=[func])
    return getattr(mod, func), rest, full


def _management_help(name: str) -> str:
    summary, subs = MANAGEMENT[name]
    lines = [f"\nUsage:  {PROG} {name} COMMAND\n", summary + "\n", "Commands:"]
    lines += [f"  {sub}" for sub in subs if sub not in ("list", "remove")]
    lines += ["", f"Run '{PROG} {name} COMMAND --help' for more information on a command.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None, cli: Cli | None = None) -> int:
    """Run the CLI and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = cli or Cli()
    try:
        opts, rest = parse(GLOBAL, argv)
    except HelpRequested:
        cli.out.write(usage())
        return 0
    except UsageError as e:
        cli.err.write(f"{PROG}: {e}\nSee '{PROG} --help'.\n")
        return 125
    if opts.version:
        cli.print(f"Engine version {__version__}, API 1.41")
        return 0
    if rest and rest[0] == "help" and len(rest) > 1:
        rest = rest[1:] + ["--help"]  # "engine help run" is "engine run --help"
    elif not rest or rest[0] == "help":
        cli.out.write(usage())
        return 0
    cli.host = opts.host or cli.host
    cli.debug = opts.debug
    try:
        func, args, full = _lookup(rest)
        if func is None:
            cli.out.write(_management_help(full))
            return 0
        cli.command = full
        return func(cli, args)
    except StatusError as e:
        if e.message:
            cli.err.write(e.message.rstrip("\n") + "\n")
        return e.code
    except UsageError as e:
        cmd = e.command or cli.command
        hint = f"See '{PROG} {cmd} --help'." if cmd else f"See '{PROG} --help'."
        cli.err.write(f"{PROG}: {e}\n{hint}\n")
        return 125
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        except OSError:
            pass
        return 1
    except Exception as e:  # noqa: BLE001 - report API and connection errors plainly
        from engine.sdk.client import APIError, ConnectError, HostError

        if isinstance(e, (APIError, ConnectError, HostError)):
            cli.err.write(f"{e}\n")
            return 1
        if cli.debug:
            raise
        cli.err.write(f"{PROG}: {type(e).__name__}: {e}\n")
        return 1
    finally:
        if cli._api is not None:
            cli._api.close()


__all__ = ["COMMANDS", "Cli", "MANAGEMENT", "StatusError", "main"]
