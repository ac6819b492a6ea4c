"""torch -> ONNX export with DyT forms, folding and verification."""

from .api import FormConversion, convert_form_file, export_model, export_onnx
from .config import ExportConfig
from .fold import FoldReport, fold_dyt_affine
from .forms import DOMAIN, FORMS, OP_TYPE, current_form, dyt_nodes, dyt_sites, site_counts, to_form
from .steps import ExportError, ExportResult, VerificationFailed

__all__ = [
    "DOMAIN", "FORMS", "OP_TYPE", "ExportConfig", "ExportError", "ExportResult", "FoldReport", "FormConversion",
    "VerificationFailed", "convert_form_file", "current_form", "dyt_nodes", "dyt_sites", "export_model", "export_onnx",
    "fold_dyt_affine", "site_counts", "to_form",
]
