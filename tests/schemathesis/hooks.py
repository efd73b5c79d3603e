"""Schemathesis hooks for stockd: a check that a 4xx answer to a mutating request changed
nothing. Before every call the products' versions are recorded; after a 4xx, any product whose
version moved may only have gained entries made by the server itself (expiry, actor "stockd")."""

import os

import requests
import schemathesis

BASE = os.environ["STOCKD_BASE"]
AUTH = {"Authorization": "Bearer " + os.environ["STOCKD_TOKEN"]}
_before = {}


def _versions():
    versions, after = {}, None
    for _ in range(100):  # bounded: 100 pages of 1000
        url = BASE + "/v1/products?limit=1000" + (f"&after={after}" if after else "")
        page = requests.get(url, headers=AUTH, timeout=10).json()
        versions.update({p["sku"]: p["version"] for p in page["products"]})
        after = page["next"]
        if after is None:
            return versions
    raise AssertionError("more products than the check can page through")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method.upper() != "GET":
        _before["versions"] = _versions()


@schemathesis.check
def no_state_change_on_4xx(ctx, response, case):
    """A 4xx to a mutating request leaves every product as it was."""
    if case.method.upper() == "GET" or not 400 <= response.status_code < 500:
        return None
    before = _before.get("versions", {})
    for sku, version in _versions().items():
        old = before.get(sku, 0)
        if version == old:
            continue
        history = requests.get(f"{BASE}/v1/products/{sku}/history?limit=1000", headers=AUTH, timeout=10).json()
        by_client = [e for e in history["entries"] if e["seq"] > old and e["actor"] != "stockd"]
        if by_client:
            raise AssertionError(
                f"{case.method} {case.formatted_path} answered {response.status_code} "
                f"but changed {sku}: {by_client}"
            )
    return None
