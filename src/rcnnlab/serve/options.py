"""The server's options, with their ranges: the CLI's `rcnnlab serve` flags and the Python
`ServeOptions` are the same fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeOptions(BaseModel):
    """How `rcnnlab serve` batches and what it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(8, ge=1, le=256, description="images run as one batch at most")
    max_wait_ms: float = Field(
        10.0, ge=0.0, le=10_000.0,
        description="how long the first image of a batch waits for others to join it")
    max_upload_mb: float = Field(20.0, gt=0.0, le=4096.0,
                                 description="largest request body accepted, in MiB")
    max_pixels: int = Field(40_000_000, ge=1,
                            description="largest image accepted, in pixels (width x height)")
    max_images: int = Field(16, ge=1, le=1024, description="images in one request at most")
    device: str = Field("auto", description="cpu, cuda, cuda:N, mps or auto")
    backend: str = Field("auto", description="auto, torch, onnxruntime, openvino, torchscript")

    @property
    def max_upload_bytes(self) -> int:
        """`max_upload_mb` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
