"""The HTTP layer's view of a sandbox: each request decided under the sandbox's one lock.

Rate limit first, then faults, then the OAuth model, so a fault never touches
token state; the admin API is the Python API over JSON.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tokend.sandbox.model import SandboxModel
from tokend.sandbox.pkce import Challenge
from tokend.sandbox.replies import Refusal, Reply, error_reply
from tokend.sandbox.traffic import PROCESSED_FAULTS, Fault, Traffic, rate_limited_reply

if TYPE_CHECKING:
    from tokend.sandbox import Sandbox


class Backend:
    """The HTTP layer's view of a sandbox: every request decided under the one lock."""

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        model: SandboxModel,
        traffic: Traffic,
        lock: threading.Lock,
        stopping: threading.Event,
    ) -> None:
        self._sandbox = sandbox
        self._model = model
        self._traffic = traffic
        self._lock = lock
        self.stopping = stopping

    def authorize_request(self, query: Mapping[str, str]) -> str:
        with self._lock:
            return self._model.authorize(
                client_id=query.get("client_id", ""), redirect_uri=query.get("redirect_uri", ""),
                response_type=query.get("response_type", ""), scope=query.get("scope", ""),
                user=query.get("user", "demo"), challenge=Challenge.of(query),
                resource_owner_type=query.get("resource_owner_type", ""),
            )

    def token_request(
        self, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> Reply | Fault:
        """Rate limit, then faults, then the model: a fault never touches token state.

        The answer delay holds only answers the model gives, not a fault's or a 429.
        """
        grant, received = form.get("grant_type", ""), time.monotonic()
        with self._lock:
            self._traffic.count(grant)
            presented = form.get("refresh_token", "")
            if grant == "refresh_token" and self._model.was_refreshed(presented):
                self._traffic.count("refresh_token_reused")
            wait = self._traffic.take_rate_slot()
            answer: Reply | Fault | None = None if wait is None else rate_limited_reply(wait)
            if answer is None:
                answer = self._traffic.next_fault(grant)
            if isinstance(answer, Fault) and answer.kind in PROCESSED_FAULTS:
                fault = answer
                answer = replace(
                    self._model.token(form, basic),
                    delay=fault.seconds if fault.kind == "delay" else 0.0,
                    dropped=fault.kind == "drop",
                )
            if answer is None:
                answer = replace(self._model.token(form, basic),
                                 delay=self._traffic.answer_delay(grant))
            if isinstance(answer, Fault):
                status = answer.answer_status
            else:
                status = 0 if answer.dropped else answer.status
            self._traffic.log_token_request(received, grant, status)
            return answer

    def revoke_request(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply:
        with self._lock:
            self._traffic.count("revoke")
            wait = self._traffic.take_rate_slot()
            return rate_limited_reply(wait) if wait is not None else self._model.revoke(form, basic)

    def settings(self) -> dict[str, Any]:
        return self._sandbox.settings()

    def me_request(self, access_token: str) -> Reply:
        with self._lock:
            self._traffic.count("me")
            return self._model.me(access_token)

    def admin_request(self, method: str, path: str, data: dict[str, Any]) -> Reply:
        """The admin API: the Python API over JSON, for a sandbox in another process."""
        sb = self._sandbox
        routes: dict[tuple[str, str], Callable[[], object]] = {
            ("POST", "faults"): lambda: sb.inject_fault(**data),
            ("DELETE", "faults"): sb.clear_faults,
            ("GET", "settings"): sb.settings,
            ("GET", "stats"): lambda: {**sb.stats(), "token_requests": sb.token_requests()},
            ("POST", "stats/reset"): sb.reset_stats,
            ("POST", "clock-offset"): lambda: sb.set_clock_offset(**data),
            ("POST", "answer-delay"): lambda: sb.set_answer_delay(**data),
            ("POST", "clients"): lambda: sb.add_client(**data),
            ("POST", "authorize"): lambda: {"code": sb.authorize(**data)},
            ("POST", "refresh-token-state"): lambda: {"state": sb.refresh_token_state(**data)},
            ("POST", "revoke-user"): lambda: {"revoked": sb.revoke_user(**data)},
        }
        route = routes.get((method, path.removeprefix("/_sandbox/")))
        if route is None:
            return error_reply(404, "not_found", "No such admin endpoint.")
        try:
            result = route()
        except Refusal as refusal:
            return refusal.reply
        except (TypeError, ValueError) as exc:
            return error_reply(400, "invalid_request", str(exc))
        return Reply(200, result if isinstance(result, dict) else {})

