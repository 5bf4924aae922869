from engine.sdk import hookimpl


@hookimpl
def engine_register_driverz(registrar):  # misspelled: must fail loudly
    pass
