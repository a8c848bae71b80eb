"""Fakes shared by the unit tests: a gRPC servicer context whose abort raises, as grpc.aio's does."""

from __future__ import annotations

import grpc


class Aborted(Exception):
    """What FakeContext.abort raises: the status code and details a servicer answered."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)
