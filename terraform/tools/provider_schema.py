"""Extract the Terraform schema of the resources we use from a cdktf provider package.

`terraform validate` needs the provider binaries, which only the Terraform registry serves.
The npm packages ``@cdktf/provider-<name>`` are generated from the same provider schema
(``terraform providers schema -json``) and the npm registry is reachable, so this script
turns a package's ``.jsii`` type manifest into the small JSON file that
``tests/test_deploy_terraform.py`` checks every resource block against: which arguments
and nested blocks exist, which are required, which blocks take a single item, and which
attributes other resources may read.

Regenerate after bumping a provider (versions in terraform/environment/versions.tf):

    npm pack @cdktf/provider-google@16.12.1 @cdktf/provider-random@12.0.1 @cdktf/provider-tls@11.0.1
    for f in cdktf-provider-*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python terraform/tools/provider_schema.py cdktf-provider-*/package \\
        --terraform-dir terraform > tests/data/terraform-provider-schema.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import hcl2

LINK = re.compile(r"docs/(?:resources|data-sources)/[a-z0-9_]+#(?P<attribute>[a-z0-9_]+) ")
TYPE_LINK = re.compile(r"docs/(?P<kind>resources|data-sources)/[a-z0-9_]+ (?P<name>[a-z0-9_]+)\}")
CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _element_fqn(type_ref: dict) -> tuple[str | None, bool]:
    """The nested-block type a property refers to (or None), and whether it is a list."""
    if "fqn" in type_ref:
        return type_ref["fqn"], False
    for option in type_ref.get("union", {}).get("types", []):
        collection = option.get("collection", {})
        if collection.get("kind") == "array" and "fqn" in collection.get("elementtype", {}):
            return collection["elementtype"]["fqn"], True
    return None, False


def _block_schema(types: dict, fqn: str) -> dict:
    attributes: dict[str, dict] = {}
    blocks: dict[str, dict] = {}
    for prop in types[fqn].get("properties", []):
        match = LINK.search(prop.get("docs", {}).get("remarks", ""))
        name = match["attribute"] if match else CAMEL.sub("_", prop["name"]).lower()
        required = not prop.get("optional", False)
        element, is_list = _element_fqn(prop["type"])
        if element and types.get(element, {}).get("datatype"):
            nested = _block_schema(types, element)
            blocks[name] = {"required": required, "single": not is_list, **nested}
        else:
            attributes[name] = {"required": required}
    return {"attributes": attributes, "blocks": blocks}


def resources_in_package(package: Path) -> tuple[dict, dict]:
    manifest = json.loads((package / ".jsii").read_text())
    provider = json.loads((package / "package.json").read_text())["cdktf"]["provider"]
    types = manifest["types"]
    resources = {}
    for fqn, spec in types.items():
        if spec.get("kind") != "class":
            continue
        match = TYPE_LINK.search(spec.get("docs", {}).get("summary", ""))
        config = f"{fqn}Config"
        if match and config in types:
            key = match["name"] if match["kind"] == "resources" else f"data.{match['name']}"
            resources[key] = _block_schema(types, config)
            # Every attribute an expression may read (arguments and computed ones alike).
            resources[key]["readable"] = sorted(
                CAMEL.sub("_", prop["name"]).lower()
                for prop in spec.get("properties", [])
                if not prop["name"].endswith("Input") and prop["name"] != "tfResourceType"
            )
    return provider, resources


def resource_types_used(terraform_dir: Path) -> set[str]:
    used = set()
    for path in terraform_dir.rglob("*.tf"):
        if ".terraform" in path.parts:
            continue
        parsed = hcl2.loads(path.read_text())
        for block in parsed.get("resource", []):
            used.update(name.strip('"') for name in block)
        for block in parsed.get("data", []):
            used.update(f"data.{name.strip(chr(34))}" for name in block)
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="+", type=Path, help="unpacked cdktf provider packages")
    parser.add_argument("--terraform-dir", type=Path, required=True)
    args = parser.parse_args()
    used = resource_types_used(args.terraform_dir)
    out = {"source": {}, "resources": {}}
    for package in args.packages:
        provider, resources = resources_in_package(package)
        meta = json.loads((package / "package.json").read_text())
        out["source"][provider["name"]] = {
            "version": provider["version"],
            "extracted_from": f"npm {meta['name']}@{meta['version']}",
        }
        out["resources"].update({k: v for k, v in resources.items() if k in used})
    missing = sorted(used - out["resources"].keys())
    if missing:
        print(f"no schema for: {', '.join(missing)}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
