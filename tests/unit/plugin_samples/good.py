"""A volume driver that keeps its volumes in a dict: the smallest working plugin."""
from engine.sdk import VolumeDriver, VolumeInfo, hookimpl
from engine.sdk.errors import NotFound


class MemoryVolumes(VolumeDriver):
    name = "memory"

    async def start(self):
        self.vols = {}

    async def create(self, name, options, labels):
        self.vols[name] = VolumeInfo(name=name, mountpoint=f"/mem/{name}")
        return self.vols[name]

    async def remove(self, name):
        self.vols.pop(name)

    async def get(self, name):
        try:
            return self.vols[name]
        except KeyError:
            raise NotFound(name) from None

    async def list(self):
        return list(self.vols.values())

    async def mount(self, name, mount_id):
        return self.vols[name].mountpoint

    async def unmount(self, name, mount_id):
        pass


@hookimpl
def engine_register_drivers(registrar):
    registrar.add_volume_driver(MemoryVolumes)
