"""Export of trained libra-d2 / detectron2 detectors: TorchScript tracing, torch.export,
AOTInductor and ONNX (:mod:`.exporters`), through the branch-free inference path of
:mod:`.inference` where torch.export needs one."""
from .exporters import (  # noqa: F401
    ONNX_EXPORTERS,
    BackboneExportError,
    ExportableDetector,
    compare_detections,
    compile_aoti,
    data_dependent_convolutions,
    default_example_size,
    export_onnx,
    export_program,
    size_bounds,
    trace_detector,
)

__all__ = [
    "BackboneExportError", "ExportableDetector", "trace_detector", "export_program", "compile_aoti", "data_dependent_convolutions",
    "size_bounds", "export_onnx", "ONNX_EXPORTERS", "default_example_size", "compare_detections",
]
