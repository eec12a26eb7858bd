"""`dltrain plugins`: the plugins loaded (entry points, dltrain.yaml, --plugin)
and the layer types each registered, then every known layer type."""


def cmd_plugins(args):
    from dlcore import layer_types
    from dlcore.plugins import loaded_plugins
    plugins = loaded_plugins()
    if plugins:
        print("plugins:")
        for source, module, types in plugins:
            print(f"  {module} ({source}): {', '.join(types) if types else 'no new layer types'}")
    else:
        print("plugins: none (install a package with a 'dltrain.layers' entry point, list modules under "
              "'plugins:' in dltrain.yaml, or pass --plugin MODULE)")
    print("layer types: " + ", ".join(layer_types()))
    return 0


def register(sub):
    p = sub.add_parser("plugins", help="list the plugins loaded and every known layer type")
    p.set_defaults(func=cmd_plugins)
