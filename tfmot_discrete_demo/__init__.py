"""The `tfmot-discrete demo` application: trains with `tfmot_discrete`, exports
with `tflite_export` (it sits above both packages, which never import it)."""
