"""One exception tree for the whole project. Library errors (etcd, NATS, ZeroMQ, torch,
HTTP) are translated into these at the boundary where they occur.

    MixrouteError
    ├── ConfigError             bad configuration; the message says how to fix it
    ├── RuntimeBackendError     discovery / event plane / request plane failures
    │   ├── DiscoveryError
    │   ├── EventPlaneError
    │   └── RequestPlaneError
    │       ├── PeerGoneError       the remote process died or closed mid-stream
    │       ├── UnknownEndpointError
    │       └── RemoteHandlerError  the remote handler raised; carries its message
    ├── EngineError
    │   ├── OutOfBlocksError    no KV blocks for a request even after preemption
    │   └── RequestTooLongError prompt + max_tokens exceed the model's context
    └── ApiError                an HTTP-facing error with an OpenAI-shaped body
        ├── BadRequestError     400
        ├── NotFoundError       404
        ├── PayloadTooLargeError 413
        ├── UnprocessableError  422
        ├── OverloadedError     429
        └── UnavailableError    503
"""

from __future__ import annotations


class MixrouteError(Exception):
    pass


class ConfigError(MixrouteError):
    pass


class RuntimeBackendError(MixrouteError):
    pass


class DiscoveryError(RuntimeBackendError):
    pass


class EventPlaneError(RuntimeBackendError):
    pass


class RequestPlaneError(RuntimeBackendError):
    pass


class PeerGoneError(RequestPlaneError):
    pass


class UnknownEndpointError(RequestPlaneError):
    pass


class RemoteHandlerError(RequestPlaneError):
    pass


class EngineError(MixrouteError):
    pass


class OutOfBlocksError(EngineError):
    pass


class RequestTooLongError(EngineError):
    pass


class ApiError(MixrouteError):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, object]:
        """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code if self.code is not None else self.status_code,
            }
        }


class BadRequestError(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class NotFoundError(ApiError):
    status_code = 404
    error_type = "not_found_error"


class MethodNotAllowedError(ApiError):
    status_code = 405
    error_type = "invalid_request_error"


class PayloadTooLargeError(ApiError):
    status_code = 413
    error_type = "invalid_request_error"


class UnprocessableError(ApiError):
    status_code = 422
    error_type = "invalid_request_error"


class OverloadedError(ApiError):
    status_code = 429
    error_type = "rate_limit_error"


class BadGatewayError(ApiError):
    status_code = 502
    error_type = "upstream_error"


class UnavailableError(ApiError):
    status_code = 503
    error_type = "service_unavailable"
