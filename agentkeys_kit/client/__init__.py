"""The `agentkeys` command: a user's client of the broker (and, for the ``heima`` backend, of the
worker). It imports only `agentkeys_kit.protocol` and libraries, never the broker or the simulator.

Modules: `cli` (argparse; each command is registered by its own module, listed in
`cli.COMMAND_MODULES`), `api` (the broker's HTTP API and the worker's JSON-RPC), `credentials`
(the bearer in the OS keychain through `keyring`, else a 0600 file), `wallet` (``init wallet``),
`session` (``whoami``, ``logout``).
"""
