"""Weight formats as the bench names them: dtype[+quantization], e.g. float32, bfloat16+int8 (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from protos.model_spec import SpecProblem, check_dtype, check_quantization


@dataclass(frozen=True)
class WeightFormat:
    """A model's dtype and the quantization of its linear layers, written dtype[+quantization]."""

    dtype: str = "float32"
    quantization: str = "none"

    @property
    def label(self) -> str:
        return self.dtype if self.quantization == "none" else f"{self.dtype}+{self.quantization}"

    @classmethod
    def parse(cls, text: str) -> WeightFormat:
        """'bfloat16+int8' -> WeightFormat('bfloat16', 'int8'); ValueError naming what is allowed."""
        dtype, _, quantization = text.partition("+")
        try:
            return cls(check_dtype(dtype), check_quantization(quantization or "none"))
        except SpecProblem as e:
            raise ValueError(f"weight format {text!r}: {e}") from None


FLOAT32 = WeightFormat()


def parse_formats(text: str) -> list[WeightFormat]:
    return [WeightFormat.parse(t.strip()) for t in text.split(",") if t.strip()]
