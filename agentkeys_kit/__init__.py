"""AgentKeys ↔ Heima kit: one distribution, one import name.

* `agentkeys_kit.protocol` — the wire contract, pure and I/O-free;
* `agentkeys_kit.omni_sim` — the simulator of the worker's JSON-RPC (`omni-sim`);
* `agentkeys_kit.broker` — the AgentKeys broker (`agentkeys-broker`);
* `agentkeys_kit.conformance` — the YAML suites, their runner and reports (`conformance`).

Everything lives under this one name so that installing the kit never shadows another PyPI
project (`protocol`, `broker`, `conformance` and `fixtures` are all taken there).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentkeys-heima-kit")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+checkout"
