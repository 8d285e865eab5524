"""`edgerules serve`: mitmproxy's own `Master` with only the addons a reverse-proxy edge needs.

`mitmdump -s addon.py` loads ~35 addons (flow dumper, playback, blocklists, map local/remote, ...); every
hook of every flow is dispatched to each of them, and the dumper formats a line per flow. Here the master
carries the proxy server, protocol detection, TLS, option checking, terminal logging and startup error checks,
plus `EdgeRules` itself. The behaviour seen by clients is the same as mitmdump's (same proxy core, same
`connection_strategy=lazy`), and the log keeps mitmdump's `... listening at HOST:PORT.` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import (
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    termlog,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.proxy import mode_servers

from edgerules.edge.addon import EdgeRules
from edgerules.edge.mitmprivate import detach_configure_all, iter_hooks
from edgerules.edge.workers import ENV_LISTEN_FD, LISTEN_BACKLOG
from edgerules.policy.load import load_policy_file
from edgerules.policy.model import Policy

log = logging.getLogger("edgerules")

DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class ServeConfig:
    policy_path: str
    env: str | None = None
    listen: str = DEFAULT_LISTEN
    mode: str | None = None  # None: reverse to the policy's first region
    settings: Sequence[str] = field(default_factory=tuple)  # mitmproxy "option=value" strings
    certs: Sequence[str] = field(default_factory=tuple)  # "[domain=]path" PEM files (certificate + key): TLS
    workers: int = 1  # worker processes (edgerules.edge.supervisor); 1: this process serves
    drain_timeout: float = 30.0  # SIGTERM: the longest in-flight requests may take before we exit anyway


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces); port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen expects HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def default_mode(policy: Policy) -> str:
    """Reverse mode to the first region's upstream. The addon calls origins itself for buffered requests and
    rewrites the destination of streams, so this target is only mitmproxy's fallback."""
    region = next(iter(policy.regions.values()))
    return f"reverse:{region.scheme}://{region.host}:{region.port}"


class HookTable(addonmanager.AddonManager):
    """mitmproxy's AddonManager, with each event's handlers looked up once instead of for every event.

    The stock `trigger_event` walks every addon and its children with `getattr` for each hook of each flow
    (about eight events per request, most handled by nobody) and re-reads the event's dataclass fields per
    addon. Here the handlers come from the stock `_iter_hooks`, in the same order, each top-level addon still
    under its own `safecall` and an `AddonHalt` still ending the chain; the table is dropped whenever addons
    are added or removed. (An addon whose children change while running - mitmproxy's script loader - would
    need more: `edgerules serve` has none.)
    """

    def __init__(self, master: master.Master) -> None:
        super().__init__(master)
        self._handlers: dict[str, list[list]] = {}
        # event class -> its argument names: `Hook.args()` asks `dataclasses.fields` again for every event
        self._arg_names: dict[type, tuple[str, ...]] = {}

    def add(self, *addons) -> None:
        self._handlers.clear()
        super().add(*addons)
        self._handlers.clear()

    def remove(self, addon) -> None:
        self._handlers.clear()
        super().remove(addon)
        self._handlers.clear()

    def clear(self) -> None:
        self._handlers.clear()
        super().clear()
        self._handlers.clear()

    def _table(self, event: hooks.Hook) -> list[list]:
        handlers = self._handlers.get(event.name)
        if handlers is None:
            handlers = []
            for addon in self.chain:
                funcs = [func for _, func in iter_hooks(self, addon, event)]
                if funcs:
                    handlers.append(funcs)
            self._handlers[event.name] = handlers
        return handlers

    async def trigger_event(self, event: hooks.Hook) -> None:
        try:
            handlers = self._table(event)
        except exceptions.AddonManagerError:  # a handler that is not callable: the stock path logs it
            await super().trigger_event(event)
            return
        if not handlers:
            return
        names = self._arg_names.get(type(event))
        if names is None:
            # every mitmproxy hook is a dataclass (the Hook base class is not declared one)
            fields = dataclasses.fields(event)  # type: ignore[arg-type]
            names = self._arg_names[type(event)] = tuple(f.name for f in fields)
        args = [getattr(event, name) for name in names]
        for funcs in handlers:
            try:
                with addonmanager.safecall():
                    for func in funcs:
                        result = func(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return


class InFlight:
    """The requests between their headers and their response (or error, or their client's disconnect: a
    request refused at the head and closed gets no response hook), for draining on SIGTERM."""

    def __init__(self) -> None:
        self.flows: dict[str, Any] = {}

    def requestheaders(self, flow) -> None:
        self.flows[flow.id] = flow

    def response(self, flow) -> None:
        self.flows.pop(flow.id, None)

    def error(self, flow) -> None:
        self.flows.pop(flow.id, None)

    def client_disconnected(self, client) -> None:
        for flow_id in [i for i, flow in self.flows.items() if flow.client_conn is client]:
            del self.flows[flow_id]


def use_inherited_socket(sock: socket.socket) -> None:
    """Make mitmproxy's reverse-proxy server accept on ``sock`` (bound and listening in the supervisor of
    `serve --workers N`, inherited by this worker) instead of binding a port itself. mitmproxy has no option for
    this: its `listen` is replaced for reverse mode in this process only."""
    original = mode_servers.ReverseInstance.listen

    async def listen(self, host: str, port: int):
        if self.mode.transport_protocol != "tcp":
            return await original(self, host, port)
        # asyncio accepts up to `backlog` connections each time the socket is readable: with the shared socket
        # one worker would take a whole burst of new connections (a load generator's or a balancer's keep-alive
        # pool) and the other none. One per wake-up spreads them; listen() again restores the shared queue's
        # length (asyncio's start_server set it to this backlog).
        server = await asyncio.start_server(self.handle_stream, sock=sock, backlog=1)
        sock.listen(LISTEN_BACKLOG)
        return [server]

    mode_servers.ReverseInstance.listen = listen  # type: ignore[method-assign]


async def drain(edge_master: master.Master, inflight: InFlight, timeout: float) -> None:
    """Stop accepting, let the requests in flight finish (at most ``timeout`` seconds), then shut down."""
    loop = asyncio.get_running_loop()
    proxy = edge_master.addons.get("proxyserver")
    if proxy is not None:
        with contextlib.suppress(Exception):
            await proxy.servers.update([])  # closes this process's listener; connections stay
    deadline = loop.time() + timeout
    while inflight.flows and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if inflight.flows:
        log.warning("shutting down with %d requests still in flight (drain timeout)", len(inflight.flows))
    else:
        await asyncio.sleep(0.2)  # the last responses' bytes are on their way out
    edge_master.shutdown()


class EdgeMaster(master.Master):
    """A mitmproxy master with the proxy core and edgerules, nothing else."""

    def __init__(self, opts: options.Options, edge: EdgeRules | None = None) -> None:
        super().__init__(opts, with_termlog=False)
        # Our addon manager in place of the stock one (still empty: nothing was added to it yet).
        detach_configure_all(opts, self.addons)
        self.addons = HookTable(self)
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        self.edge = edge or EdgeRules()
        self.inflight = InFlight()
        self.addons.add(
            self.inflight,
            core.Core(),
            disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            update_alt_svc.UpdateAltSvc(),
            errorcheck.ErrorCheck(),
            self.edge,
        )


def configure_options(opts: options.Options, config: ServeConfig, mode: str) -> None:
    """Proxy defaults, then the user's `--set`s (they may override them) together with the policy: setting it
    builds the edge runtime, which must see every other option (e.g. `edgerules_reload_interval`)."""
    host, port = parse_listen(config.listen)
    # no mitmweb, console or -w here to look at flows: the decision is not written onto each one
    opts.update(
        listen_host=host,
        listen_port=port,
        mode=[mode],
        connection_strategy="lazy",
        edgerules_flow_details=False,
    )
    if config.certs:  # clients that open TLS get this certificate; ALPN offers h2 and http/1.1
        opts.update(certs=list(config.certs))
    # The user's `--set`s and the policy in ONE update: the addon sees every option when it builds the runtime
    # (a `--set edgerules_reload_interval=...` applied alone, before the policy, would find no policy yet).
    specs = list(config.settings)
    given = {spec.partition("=")[0] for spec in specs}
    if "edgerules_policy" not in given:
        specs.append(f"edgerules_policy={config.policy_path}")
    if "edgerules_env" not in given:
        specs.append(f"edgerules_env={config.env or ''}")
    opts.set(*specs)


def _configure_logging() -> None:
    """The same levels mitmdump sets (mitmproxy.tools.main.run); termlog prints INFO and above."""
    logging.getLogger().setLevel(logging.DEBUG)
    for name, level in (("asyncio", logging.WARNING), ("hpack", logging.WARNING), ("quic", logging.WARNING)):
        logging.getLogger(name).setLevel(level)


async def serve(config: ServeConfig, *, mode: str) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean shutdown, 1 if the options are invalid."""
    _configure_logging()
    inherited = os.environ.get(ENV_LISTEN_FD)
    if inherited:  # one worker of `serve --workers N`
        use_inherited_socket(socket.socket(fileno=int(inherited)))
    opts = options.Options()
    edge_master = EdgeMaster(opts)
    try:
        configure_options(opts, config, mode)
    except (exceptions.OptionsError, KeyError, NotImplementedError) as exc:  # NotImplemented: type
        print(f"edgerules serve: {exc}", flush=True)
        return 1
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if stopping:  # a second signal: stop now
            edge_master.shutdown()
            return
        stopping.append(loop.create_task(drain(edge_master, edge_master.inflight, config.drain_timeout)))

    def reload() -> None:
        runtime = edge_master.edge.runtime
        if runtime is not None:
            log.info("SIGHUP: reloading the policy")
            stopping_or_reload = loop.create_task(runtime.reload())
            _background.add(stopping_or_reload)
            stopping_or_reload.add_done_callback(_background.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await edge_master.run()
    return 0


_background: set[asyncio.Task[bool]] = set()


def run(config: ServeConfig) -> int:
    """Check the policy (file:line errors raise PolicyError before anything listens), then serve."""
    policy = load_policy_file(config.policy_path, config.env, environ=os.environ, for_serving=True).policy
    if config.workers > 1 and not os.environ.get(ENV_LISTEN_FD):
        from edgerules.edge.supervisor import supervise

        return supervise(config, config.workers)
    return asyncio.run(serve(config, mode=config.mode or default_mode(policy)))


__all__ = [
    "DEFAULT_LISTEN",
    "EdgeMaster",
    "HookTable",
    "InFlight",
    "ServeConfig",
    "configure_options",
    "default_mode",
    "drain",
    "parse_listen",
    "run",
    "serve",
    "use_inherited_socket",
]
