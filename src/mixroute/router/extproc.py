"""Envoy ext_proc front door: the same core decision over Envoy's external-processing gRPC.

One gRPC stream is one HTTP request. Envoy must send request headers, the request body
BUFFERED, response headers, and the response body STREAMED (deploy/envoy/envoy.yaml):
- request body -> `RouterCore.handle` -> an immediate response (block, cache hit, bad
  request) or a body mutation (rewritten body, new content-length, x-vsr-* request
  headers for routing, x-mixroute-upstream naming the model's endpoint) with the route
  cache cleared;
- response headers -> x-vsr-* response headers;
- response body chunks -> passed on unchanged, recorded for the semantic cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from mixroute.errors import ConfigError
from mixroute.router import responses
from mixroute.router.cache import StreamRecorder, answer_from_json
from mixroute.router.core import Reply, RouterCore, Upstream
from mixroute.router.decision import header_value

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"


def _header_values(headers: dict[str, str]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for k, v in headers.items()
    ]


def _read_headers(message: pb.HttpHeaders) -> dict[str, str]:
    out = {}
    for h in message.headers.headers:
        out[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


def immediate(reply: Reply) -> pb.ProcessingResponse:
    headers = {**reply.headers, "content-type": reply.media_type}
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=reply.status),
        headers=pb.HeaderMutation(set_headers=_header_values(headers)),
        body=reply.body,
    ))


UPSTREAM_HEADER = "x-mixroute-upstream"
"""host:port of the chosen model's endpoint; deploy/envoy routes a request carrying it there."""


def upstream_authority(endpoint: str) -> str:
    """`http://host:port/any/prefix` -> `host:port` (Envoy resolves it, IP or DNS name)."""
    return urlsplit(endpoint).netloc


def forward(upstream: Upstream) -> pb.ProcessingResponse:
    route = upstream.forward.route
    headers = {
        "content-length": str(len(upstream.body)),
        "x-vsr-selected-model": header_value(route.model),
        UPSTREAM_HEADER: upstream_authority(upstream.forward.endpoint),
    }
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=_header_values(headers)),
        body_mutation=pb.BodyMutation(body=upstream.body),
        clear_route_cache=True,
    )))


class _Exchange:
    """State of one HTTP request across the messages of its gRPC stream."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.is_chat = False
        self.body = b""
        self.upstream: Upstream | None = None
        self.recorder: StreamRecorder | None = None
        self.is_sse = False
        self.response_body = b""


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        exchange = _Exchange()
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                exchange.headers = _read_headers(message.request_headers)
                path = exchange.headers.get(":path", "").split("?", 1)[0]
                method = exchange.headers.get(":method")
                exchange.is_chat = method == "POST" and path == CHAT_PATH
                if method == "GET" and path == MODELS_PATH:
                    # Same listing as the proxy (auto names + real models), not the upstream's.
                    body = responses.models_json(self.core.config)
                    yield immediate(Reply(200, body, responses.JSON_MEDIA_TYPE))
                    continue
                # Only the router names an upstream: a client-sent copy would let any
                # caller steer Envoy to a host of its choice.
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(remove_headers=[UPSTREAM_HEADER]),
                    clear_route_cache=UPSTREAM_HEADER in exchange.headers,
                )))
            elif kind == "request_body":
                exchange.body += message.request_body.body
                yield await self._on_request_body(exchange, message.request_body.end_of_stream)
            elif kind == "response_headers":
                yield self._on_response_headers(exchange, message.response_headers)
            elif kind == "response_body":
                yield await self._on_response_body(exchange, message.response_body)
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

    async def _on_request_body(self, exchange: _Exchange, is_end: bool) -> pb.ProcessingResponse:
        if not exchange.is_chat or not is_end:
            return pb.ProcessingResponse(request_body=pb.BodyResponse())
        outcome = await self.core.handle(exchange.body, exchange.headers)
        if isinstance(outcome, Reply):
            return immediate(outcome)
        exchange.upstream = outcome
        return forward(outcome)

    def _on_response_headers(self, exchange: _Exchange, message: pb.HttpHeaders) -> pb.ProcessingResponse:
        upstream = exchange.upstream
        if upstream is None:
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        headers = _read_headers(message)
        exchange.is_sse = headers.get("content-type", "").startswith(responses.SSE_MEDIA_TYPE)
        if headers.get(":status") == "200" and upstream.ticket is not None:
            exchange.recorder = StreamRecorder() if exchange.is_sse else None
        else:
            upstream.ticket = None
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=_header_values(upstream.headers)),
        )))

    async def _on_response_body(self, exchange: _Exchange, body: pb.HttpBody) -> pb.ProcessingResponse:
        upstream = exchange.upstream
        if upstream is not None and upstream.ticket is not None:
            if exchange.recorder is not None:
                exchange.recorder.feed(body.body)
            else:
                exchange.response_body += body.body
            if body.end_of_stream:
                answer = exchange.recorder.answer() if exchange.recorder else answer_from_json(exchange.response_body)
                await self.core.remember(upstream.ticket, answer)
        return pb.ProcessingResponse(response_body=pb.BodyResponse())


async def start_extproc_server(core: RouterCore, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server; returns it and the bound port (`port=0` picks a free one)."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ConfigError(f"cannot bind the ext_proc server to {host}:{port}; pick another --extproc-port")
    await server.start()
    log.info("ext_proc server listening on %s:%d", host, bound)
    return server, bound
