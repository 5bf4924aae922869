"""A Docker-protocol plugin served over a unix socket, for the remote plugin tests.

Run as ``python plugin_server.py SOCKET ROOT [--network]``. Volumes are directories
under ``ROOT/volumes``; every call is appended to ``ROOT/calls.log`` as one JSON line
(``{"method": ..., "body": ...}``). With ``--network`` it also implements
``NetworkDriver``: ``Join`` creates a veth pair and hands one end to the daemon.
"""
from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"


class Plugin:
    def __init__(self, root: str, network: bool) -> None:
        self.root = root
        self.network = network
        self.lock = threading.Lock()
        self.volumes = os.path.join(root, "volumes")
        os.makedirs(self.volumes, exist_ok=True)
        self.endpoints: dict[str, dict] = {}

    def record(self, method: str, body: dict) -> None:
        with self.lock, open(os.path.join(self.root, "calls.log"), "a") as f:
            f.write(json.dumps({"method": method, "body": body}) + "\n")

    # ---- handlers: return the answer document
    def activate(self, body: dict) -> dict:
        impl = ["VolumeDriver"] + (["NetworkDriver"] if self.network else [])
        return {"Implements": impl}

    def _vol(self, name: str) -> str:
        return os.path.join(self.volumes, name)

    def vol_create(self, body: dict) -> dict:
        if body.get("Opts", {}).get("fail"):
            return {"Err": "create refused: " + body["Opts"]["fail"]}
        os.makedirs(self._vol(body["Name"]), exist_ok=True)
        return {"Err": ""}

    def vol_remove(self, body: dict) -> dict:
        path = self._vol(body["Name"])
        if not os.path.isdir(path):
            return {"Err": f"no such volume: {body['Name']}"}
        subprocess.run(["rm", "-rf", path], check=True)
        return {"Err": ""}

    def vol_get(self, body: dict) -> dict:
        path = self._vol(body["Name"])
        if not os.path.isdir(path):
            return {"Err": f"no such volume: {body['Name']}"}
        return {"Volume": {"Name": body["Name"], "Mountpoint": path,
                           "Status": {"plugin": "test"}}, "Err": ""}

    def vol_path(self, body: dict) -> dict:
        return {"Mountpoint": self._vol(body["Name"]), "Err": ""}

    def vol_mount(self, body: dict) -> dict:
        path = self._vol(body["Name"])
        if not os.path.isdir(path):
            return {"Err": f"no such volume: {body['Name']}"}
        return {"Mountpoint": path, "Err": ""}

    def vol_list(self, body: dict) -> dict:
        return {"Volumes": [{"Name": n, "Mountpoint": self._vol(n)}
                            for n in sorted(os.listdir(self.volumes))], "Err": ""}

    def ok(self, body: dict) -> dict:
        return {"Err": ""}

    def net_caps(self, body: dict) -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def net_create_endpoint(self, body: dict) -> dict:
        iface = body.get("Interface") or {}
        addr = iface.get("Address") or "10.231.0.2/24"
        self.endpoints[body["EndpointID"]] = {"addr": addr}
        return {"Interface": {"Address": addr, "MacAddress": "02:42:0a:e7:00:02"}}

    def net_join(self, body: dict) -> dict:
        ep = body["EndpointID"][:6]
        host, peer = f"tph{ep}", f"tpc{ep}"
        subprocess.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer],
                       check=True)
        subprocess.run(["ip", "link", "set", host, "up"], check=True)
        return {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
                "Gateway": "10.231.0.1",
                "StaticRoutes": [{"Destination": "10.232.0.0/16", "RouteType": 1,
                                  "NextHop": ""}]}

    def net_leave(self, body: dict) -> dict:
        ep = body["EndpointID"][:6]
        subprocess.run(["ip", "link", "del", f"tph{ep}"], capture_output=True)
        return {"Err": ""}

    def net_delete_endpoint(self, body: dict) -> dict:
        self.endpoints.pop(body["EndpointID"], None)
        return {"Err": ""}

    def route(self, method: str):
        table = {
            "Plugin.Activate": self.activate,
            "VolumeDriver.Create": self.vol_create,
            "VolumeDriver.Remove": self.vol_remove,
            "VolumeDriver.Get": self.vol_get,
            "VolumeDriver.Path": self.vol_path,
            "VolumeDriver.Mount": self.vol_mount,
            "VolumeDriver.Unmount": self.ok,
            "VolumeDriver.List": self.vol_list,
            "VolumeDriver.Capabilities": lambda b: {"Capabilities": {"Scope": "local"}},
        }
        if self.network:
            table.update({
                "NetworkDriver.GetCapabilities": self.net_caps,
                "NetworkDriver.CreateNetwork": self.ok,
                "NetworkDriver.DeleteNetwork": self.ok,
                "NetworkDriver.CreateEndpoint": self.net_create_endpoint,
                "NetworkDriver.EndpointOperInfo": lambda b: {"Value": {}},
                "NetworkDriver.Join": self.net_join,
                "NetworkDriver.Leave": self.net_leave,
                "NetworkDriver.DeleteEndpoint": self.net_delete_endpoint,
            })
        return table.get(method)


def serve(sock: str, root: str, network: bool) -> None:
    plugin = Plugin(root, network)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            method = self.path.lstrip("/")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))
                              or b"{}")
            plugin.record(method, body)
            fn = plugin.route(method)
            if fn is None:
                status, doc = 404, {"Err": f"unknown method {method}"}
            else:
                status, doc = 200, fn(body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    if os.path.exists(sock):
        os.unlink(sock)
    with Server(sock, Handler) as srv:
        print("ready", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], "--network" in sys.argv[3:])
