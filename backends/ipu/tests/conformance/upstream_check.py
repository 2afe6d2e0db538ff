"""Run IPUConfig dicts through optimum-graphcore 0.7.1's OWN code (run inside .venvs/ipu-stack).

Usage: python upstream_check.py CASES.json RESULTS.json

For each case {"id", "encoder_layers", "decoder_layers", "config"} it records what upstream does with it:
``IPUConfig(**config)`` (construction: type checks, floors, per-mode validation), then in training mode
``modeling_utils._expand_layers_per_ipu_wildcard`` / ``get_layer_ipu`` (what ``parallelize()`` uses for
the layer -> IPU map), then in inference mode ``split_encoder_decoder_ipu_config`` (what generation uses).

poptorch, popart and popdist are NOT installed (they come only with the Poplar SDK). So that the modules
import, a finder below hands out MagicMock stand-ins for them; nothing checked here calls into them (the
validation and layout code is plain Python). optimum.graphcore's package ``__init__`` is skipped (it
imports the trainers, which need the real poptorch); its submodules are imported from the installed files.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from unittest import mock

STUBBED = ("poptorch", "popart", "popdist")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Fake poptorch/popart/popdist ONLY so that optimum-graphcore's modules import."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        module = mock.MagicMock(name=spec.name)
        module.__path__ = []
        module.__spec__ = spec
        return module

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        pass


def load_upstream():  # type: ignore[no-untyped-def]
    sys.meta_path.insert(0, _StubFinder())
    spec = importlib.util.find_spec("optimum")
    assert spec is not None and spec.submodule_search_locations
    package_dir = next(iter(spec.submodule_search_locations)) + "/graphcore"
    bare = types.ModuleType("optimum.graphcore")
    bare.__path__ = [package_dir]  # the package, without running its __init__
    sys.modules["optimum.graphcore"] = bare
    import optimum.graphcore.ipu_configuration as ipu_configuration
    import optimum.graphcore.modeling_utils as modeling_utils
    from optimum.graphcore.version import __version__

    return ipu_configuration.IPUConfig, modeling_utils, __version__


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def check(case, IPUConfig, modeling_utils):  # type: ignore[no-untyped-def]
    out = {"id": case["id"]}
    n_enc, n_dec = case["encoder_layers"], case["decoder_layers"]
    try:
        cfg = IPUConfig(**case["config"])
    except Exception as exc:
        out["construct"] = short(exc)
        return out
    out["construct"] = "ok"
    try:
        cfg.train()
        out["train_layers"] = modeling_utils._expand_layers_per_ipu_wildcard(cfg, n_enc + n_dec)
        out["train_layer_ipu"] = modeling_utils.get_layer_ipu(cfg, n_enc + n_dec)
        out["train"] = "ok"
    except Exception as exc:
        out["train"] = short(exc)
    try:
        cfg.eval()
        encoder, decoder = modeling_utils.split_encoder_decoder_ipu_config(cfg, n_enc, n_dec)
        out["generation_encoder"] = list(encoder._layers_per_ipu)
        out["generation_decoder"] = list(decoder._layers_per_ipu)
        out["generation_ipus"] = [encoder._ipus_per_replica, decoder._ipus_per_replica]
        mm = [encoder._matmul_proportion, decoder._matmul_proportion]
        out["generation_matmul"] = [
            m if isinstance(m, list) else [m] * n for m, n in zip(mm, out["generation_ipus"], strict=True)
        ]
        out["generation"] = "ok"
    except Exception as exc:
        out["generation"] = short(exc)
    return out


def main() -> int:
    cases_file, results_file = sys.argv[1], sys.argv[2]
    IPUConfig, modeling_utils, version = load_upstream()
    with open(cases_file, encoding="utf-8") as fh:
        cases = json.load(fh)
    results = [check(case, IPUConfig, modeling_utils) for case in cases]
    with open(results_file, "w", encoding="utf-8") as fh:
        json.dump({"optimum_graphcore": version, "results": results}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
