"""TensorRT engines: build (``build_engine``; the ``dyt-build`` command is dyt_deploy.build_cli), the
DynamicTanh plugin, profiles, and the engine manifest with its compatibility decision.

Importing this package imports neither tensorrt nor torch; they load when a build or a runner needs them.
"""

from .build import BuildResult, EngineBuildError, build_engine, resolve_target
from .manifest import (
    Compatibility,
    EngineIncompatibleError,
    EngineManifest,
    EngineManifestError,
    HostFacts,
    check_compatibility,
    gather_host_facts,
    read_engine_manifest,
)
from .plugin import PLUGIN_ID, register_plugin
from .profiles import InputProfile, ProfileError, parse_profiles, resolve_profiles

__all__ = [
    "PLUGIN_ID", "BuildResult", "Compatibility", "EngineBuildError", "EngineIncompatibleError", "EngineManifest",
    "EngineManifestError", "HostFacts", "InputProfile", "ProfileError", "build_engine", "check_compatibility",
    "gather_host_facts", "parse_profiles", "read_engine_manifest", "register_plugin", "resolve_profiles",
    "resolve_target",
]
