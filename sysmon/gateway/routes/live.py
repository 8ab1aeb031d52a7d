"""/ws/live: subscribe to hosts and metrics; receive samples as they are stored, host and alert events."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sysmon.core.identity import InvalidCredential, Scope
from sysmon.gateway import telemetry
from sysmon.gateway.auth import PROTOCOL, websocket_authorization
from sysmon.gateway.live import protocol
from sysmon.gateway.live.hub import LiveClient
from sysmon.gateway.problems import UNAVAILABLE
from sysmon.gateway.state import GatewayState

log = logging.getLogger(__name__)
router = APIRouter()


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    telemetry.WS_CLOSED.labels(str(code)).inc()
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await ws.close(code, reason)


@router.websocket("/ws/live")
async def live(ws: WebSocket) -> None:
    state: GatewayState = ws.app.state.gateway
    offered = ws.scope.get("subprotocols") or []
    # Browsers fail the handshake unless the server picks one of the protocols they offered.
    await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    if state.auth.enabled:
        try:
            principal = await state.auth.authenticate(websocket_authorization(ws.headers, offered))
        except InvalidCredential:
            principal = None
        if principal is None or not principal.allows(Scope.READER):
            await _close(ws, protocol.CLOSE_UNAUTHORIZED, "a valid bearer token of scope reader is required")
            return
    hub = state.hub
    if hub.full:
        await _close(ws, protocol.CLOSE_TRY_AGAIN_LATER, "too many live clients; try again later")
        return
    client = hub.register()
    client.send(protocol.hello_frame(int(hub.heartbeat_s * 1000), client.queue.maxlen))
    sender = asyncio.create_task(_send(ws, client, state.settings.ws_send_timeout.total_seconds()))
    receiver = asyncio.create_task(_receive(ws, client, state))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sender, receiver):
            t.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        hub.unregister(client)


async def _send(ws: WebSocket, client: LiveClient, send_timeout: float) -> None:
    q = client.queue
    while True:
        frame = await q.get()
        if frame is None:
            assert q.closed is not None
            await _close(ws, *q.closed)
            return
        try:
            missed = q.take_unreported()
            async with asyncio.timeout(send_timeout):
                if missed:
                    await ws.send_text(protocol.dropped_frame(missed, q.dropped))
                await ws.send_text(frame)
        except TimeoutError:
            log.info("live client took over %.0fs to take a frame; closing it", send_timeout)
            telemetry.WS_CLOSED.labels(str(protocol.CLOSE_TOO_SLOW)).inc()
            return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        telemetry.WS_FRAMES.inc(2 if missed else 1)


async def _receive(ws: WebSocket, client: LiveClient, state: GatewayState) -> None:
    while ws.client_state == WebSocketState.CONNECTED:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        try:
            msg = protocol.parse_message(data)
            if msg["type"] == "ping":
                client.send(protocol.PONG_FRAME)
                continue
            sub = protocol.parse_subscription(msg)
            if sub.hosts is not None:
                try:
                    unknown = await state.fleet.unknown_hosts(sub.hosts)
                except UNAVAILABLE:
                    unknown = []
                if unknown:
                    raise protocol.BadMessage(f"unknown host {unknown[0][:60]!r}", protocol.CLOSE_UNKNOWN_HOST)
        except protocol.BadMessage as e:
            # The sender delivers the close frame and so ends the connection; nothing more is read.
            client.queue.close(e.code, e.reason)
            await asyncio.Event().wait()
        client.subscription = sub
        client.send(protocol.subscribed_frame(sub))
