"""A job's Server-Sent Events: the frame parser and resume point both clients share.

The API sends ``id: <event id>``, ``event: <type>``, ``data: {id, type, job_id, data, created_at}`` and ends the
stream right after the job's terminal event. After a dropped connection the client reconnects with
``Last-Event-ID`` set to the last event it delivered, so no event is lost or repeated.
"""

from __future__ import annotations

import json

from .models import Event

EVENTS_PATH = "/v1/jobs/{job_id}/events"


class EventStream:
    """Feed it the stream's lines; it returns each complete event and remembers where to resume."""

    def __init__(self, last_event_id: int | str | None = None) -> None:
        self.last_event_id = None if last_event_id is None else str(last_event_id)
        self.done = False  # the terminal event came
        self._data: list[str] = []
        self._id: str | None = None

    def headers(self) -> dict[str, str]:
        """The next connection's headers (``Last-Event-ID`` once there is one)."""
        return {"Accept": "text/event-stream", **({"Last-Event-ID": self.last_event_id} if self.last_event_id else {})}

    def reconnecting(self) -> None:
        """A connection ended: a frame it cut in half is dropped (its event comes again after Last-Event-ID)."""
        self._data, self._id = [], None

    def feed(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: the keep-alive
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        data, frame_id = self._data, self._id
        self._data, self._id = [], None
        if not data:
            return None
        event = Event.model_validate(json.loads("\n".join(data)))
        self.last_event_id = frame_id or str(event.id)
        self.done = event.terminal
        return event
