"""Build-time tools, never imported at run time: the offline bundle (`bundle`), tiny
random-weight models (`tiny`) and the summarizer's ONNX export (`onnx_export`)."""
