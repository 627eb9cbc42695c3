"""Models endpoints: every one served from the same catalogue snapshot."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency

from app.access.keys import Caller
from app.catalogue.catalogue import Catalogue
from app.catalogue.classify import KNOWN_CAPABILITIES, Criteria, ModelInfo, categories, search
from app.catalogue.wire import CategoryMap, ModelInfoList, OpenAIModel, OpenAIModelList
from app.domain.errors import InvalidRequest
from app.server.openapi import SearchOperation, error_responses

SEARCH_PARAMS = frozenset({"capability", "provider", "mode", "category", "min_context", "max_input_cost"})


def _number(name: str, raw: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise InvalidRequest(
            f"Query parameter `{name}` must be {expected}, got {raw!r}.", param=name, code="invalid_parameter"
        ) from None
    if value < 0 or value != value:  # negative or NaN
        raise InvalidRequest(f"Query parameter `{name}` must be >= 0.", param=name, code="invalid_parameter")
    return value


def parse_criteria(params: dict[str, list[str]]) -> Criteria:
    unknown = sorted(set(params) - SEARCH_PARAMS)
    if unknown:
        raise InvalidRequest(f"Unknown query parameter `{unknown[0]}`.", param=unknown[0], code="invalid_parameter")
    for name, values in params.items():
        if name != "capability" and len(values) > 1:
            raise InvalidRequest(
                f"Query parameter `{name}` given more than once.", param=name, code="invalid_parameter"
            )
    caps = tuple(c.strip() for v in params.get("capability", []) for c in v.split(",") if c.strip())
    bad = [c for c in caps if c not in KNOWN_CAPABILITIES]
    if bad:
        raise InvalidRequest(
            f"Unknown capability {bad[0]!r}; known: {', '.join(sorted(KNOWN_CAPABILITIES))}.",
            param="capability",
            code="invalid_parameter",
        )

    def one(name: str) -> str | None:
        values = params.get(name)
        if not values:
            return None
        if not values[0].strip():
            raise InvalidRequest(f"Query parameter `{name}` is empty.", param=name, code="invalid_parameter")
        return values[0].strip()

    min_context = one("min_context")
    max_cost = one("max_input_cost")
    return Criteria(
        capabilities=caps,
        provider=one("provider"),
        mode=one("mode"),
        category=one("category"),
        min_context=_number("min_context", min_context, int) if min_context is not None else None,
        max_input_cost=_number("max_input_cost", max_cost, float) if max_cost is not None else None,
    )


def _visible(models: tuple[ModelInfo, ...] | list[ModelInfo], caller: Caller) -> list[ModelInfo]:
    """With a models allow-list, a key sees only the models it may use."""
    policy = caller.policy
    return list(models) if policy.models is None else [m for m in models if policy.allows(m.id)]


class ModelsController(Controller):
    path = ""
    tags = ["models"]

    @get("/v1/models", summary="OpenAI-compatible model list", responses=error_responses(401))
    async def list_openai(
        self, catalogue: NamedDependency[Catalogue], caller: NamedDependency[Caller]
    ) -> OpenAIModelList:
        snap = await catalogue.get()
        created = int(snap.built_at)
        return OpenAIModelList(
            data=[
                OpenAIModel(id=m.id, created=created, owned_by=snap.owned_by[m.id])
                for m in _visible(snap.models, caller)
            ]
        )

    @get(
        "/api/models",
        summary="Every model with its metadata, capabilities and categories",
        responses=error_responses(401),
    )
    async def list_info(self, catalogue: NamedDependency[Catalogue], caller: NamedDependency[Caller]) -> ModelInfoList:
        return ModelInfoList(data=_visible((await catalogue.get()).models, caller))

    @get("/api/models/categories", summary="Model ids by category", responses=error_responses(401))
    async def list_categories(
        self, catalogue: NamedDependency[Catalogue], caller: NamedDependency[Caller]
    ) -> CategoryMap:
        return CategoryMap(categories=categories(tuple(_visible((await catalogue.get()).models, caller))))

    @get(
        "/api/models/search",
        summary="Models matching every given criterion",
        operation_class=SearchOperation,
        responses=error_responses(400, 401),
    )
    async def search_models(
        self, request: Request[Any, Any, Any], catalogue: NamedDependency[Catalogue], caller: NamedDependency[Caller]
    ) -> ModelInfoList:
        criteria = parse_criteria(request.query_params.dict())
        return ModelInfoList(data=search(tuple(_visible((await catalogue.get()).models, caller)), criteria))
