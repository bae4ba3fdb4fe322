"""JSON that every parser reads. Python's `json` writes a non-finite float as a bare `NaN`
or `Infinity`, which JSON does not have (JavaScript's JSON.parse and jq refuse the whole
document); dlcli's JSON outputs write it as the string "nan", "inf" or "-inf" instead:
still there to see, never dropped (a NaN is never hidden), and valid JSON."""

import json
import math


def plain(obj):
    """obj with every non-finite float (NumPy's too) replaced by "nan", "inf" or "-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def dumps(obj, **kwargs):
    """json.dumps of `plain(obj)`; a non-finite float that slipped through is an error."""
    return json.dumps(plain(obj), allow_nan=False, **kwargs)
