"""What calls cost, read from the catalogue's current snapshot (the limiter's price book)."""

from __future__ import annotations

from app.catalogue.catalogue import Catalogue, Prices

_UNKNOWN: Prices = (None, None)


class CataloguePrices:
    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue

    def reserved(self, model: str) -> Prices:
        """The dearest prices a call to the public name ``model`` can be charged at: its group's
        dearest member's."""
        snapshot = self._catalogue.current()
        return snapshot.dearest.get(model, _UNKNOWN) if snapshot is not None else _UNKNOWN

    def charged(self, model: str, deployment: str | None) -> Prices:
        """The prices of the deployment that answered; the public name's listed ones when none did
        (or it is gone from the configuration)."""
        snapshot = self._catalogue.current()
        if snapshot is None:
            return _UNKNOWN
        if deployment is not None and (prices := snapshot.member_prices.get(deployment)) is not None:
            return prices
        info = snapshot.by_id.get(model)
        return (info.input_cost_per_mtok, info.output_cost_per_mtok) if info is not None else _UNKNOWN

    def dearest_search_fee(self, model: str) -> float | None:
        """The most a web search costs among the members of the public name ``model``."""
        snapshot = self._catalogue.current()
        return snapshot.dearest_search_fees.get(model) if snapshot is not None else None

    def search_fee(self, deployment: str | None) -> float | None:
        """USD per web search the deployment's provider ran (None: unpriced, or none answered)."""
        snapshot = self._catalogue.current()
        return snapshot.search_fees.get(deployment) if snapshot is not None and deployment is not None else None
