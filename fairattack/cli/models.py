"""`fairattack models`: the registered models."""


def add_parser(sub):
    m = sub.add_parser("models", help="the registered models")
    m.set_defaults(func=cmd_models)


def cmd_models(args):
    from .. import models

    for name in models.available_models():
        print(f"{name:24s} input {models.input_size(name)}")
    print("(or any TorchScript file: see fairattack.models.export for wrapping your own net)")
    return 0
