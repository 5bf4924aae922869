from engine.sdk import hookimpl, LogDriver


class AnotherJsonFile(LogDriver):
    name = "json-file"


@hookimpl
def engine_register_drivers(registrar):
    registrar.add_log_driver(AnotherJsonFile)
