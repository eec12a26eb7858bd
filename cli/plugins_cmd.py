"""`dltrain plugins`: the plugins loaded (entry points, dltrain.yaml, --plugin),
the layer types each registered and its file, then every known layer type."""
import sys


def cmd_plugins(args):
    from dlcore import layer_types
    from dlcore.plugins import loaded_plugins
    plugins = loaded_plugins()
    if plugins:
        print("plugins:")
        for source, module, types in plugins:
            where = getattr(sys.modules.get(module), "__file__", None) or "no file"
            print(f"  {module} ({source}): {', '.join(types) if types else 'no new layer types'} [{where}]")
    else:
        print("plugins: none (install a package with a 'dltrain.layers' entry point, list modules under "
              "'plugins:' in dltrain.yaml, or pass --plugin MODULE)")
    print("layer types: " + ", ".join(layer_types()))
    return 0


def register(sub):
    p = sub.add_parser("plugins", help="list the plugins loaded, their files, and every known layer type")
    p.set_defaults(func=cmd_plugins)
