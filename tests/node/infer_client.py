"""Standard-library client for one model of a stowplan agent (no third-party imports: it runs both
inside the agent pod, fed over `kubectl exec -i ... python3 -`, and in the node's network
namespace under nsenter). Usage: python3 infer_client.py BASE_URL MODEL [COUNT]

Finds MODEL in the agent's /v2/models index (names may carry a namespace prefix), or takes a
model's own URL (status.url: .../v2/models/NAME), posts COUNT inference requests shaped from its
metadata and prints one JSON line: {"ok": n, "shed": n, "failed": [...]}. "shed": a 503 whose
body says the request waited past its SLO in the agent's queue (the agent's load shedding when
the machine's CPUs are busy, an answer by design); anything else that is not a 200 with outputs
of the requested batch size is a failure. Exits 0 only when nothing failed and one answered.
"""

import json
import sys
import urllib.error
import urllib.request


def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def main():
    base, model = sys.argv[1].rstrip("/"), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    if "/v2/models/" in base:  # a model's own URL (status.url)
        target, base = base.rsplit("/v2/models/", 1)[1], base.rsplit("/v2/models/", 1)[0]
    else:
        index = call(base + "/v2/models")
        names = [m["name"] if isinstance(m, dict) else m for m in index.get("models", index)]
        target = next(
            n for n in names if n == model or n.endswith("/" + model) or n.endswith("." + model)
        )
    meta = call(f"{base}/v2/models/{target}")
    spec = meta["inputs"][0]
    shape = [2 if d == -1 or i == 0 else d for i, d in enumerate(spec["shape"])]
    n = 1
    for d in shape:
        n *= d
    data = ["cat"] * n if spec["datatype"] == "BYTES" else [0.5] * n  # a string model: words
    body = {
        "inputs": [
            {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data}
        ]
    }
    ok, shed, failed = 0, 0, []
    for _ in range(count):
        try:
            out = call(f"{base}/v2/models/{target}/infer", body)
            if out["outputs"][0]["shape"][0] == shape[0]:
                ok += 1
            else:
                failed.append(f"shape {out['outputs'][0]['shape']}")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            if exc.code == 503 and "SLO in the queue" in text:
                shed += 1
            else:
                failed.append(f"{exc.code} {text[:300]}")
        except Exception as exc:  # reported, not raised: the caller asserts on the summary
            failed.append(repr(exc))
    print(json.dumps({"model": target, "ok": ok, "shed": shed, "failed": failed}))
    sys.exit(0 if not failed and ok else 1)


if __name__ == "__main__":
    main()
