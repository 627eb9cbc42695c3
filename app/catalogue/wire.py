"""Wire shapes of the models endpoints (API.md 3)."""

from __future__ import annotations

from typing import Literal

import msgspec

from app.catalogue.classify import ModelInfo


class OpenAIModel(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"


class OpenAIModelList(msgspec.Struct):
    data: list[OpenAIModel]
    object: Literal["list"] = "list"


class ModelInfoList(msgspec.Struct):
    data: list[ModelInfo]


class CategoryMap(msgspec.Struct):
    categories: dict[str, list[str]]
