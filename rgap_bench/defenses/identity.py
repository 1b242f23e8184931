"""`defense=none`: the update goes out unchanged."""

from __future__ import annotations

from rgap_bench.types import ClientContext, ClientUpdate


class NoDefense:
    def __init__(self, name: str = "none") -> None:
        self.name = name

    def __call__(self, update: ClientUpdate, context: ClientContext | None = None) -> ClientUpdate:
        return update

    def report(self) -> dict[str, float | str]:
        return {"name": self.name, "distortion": 0.0}
