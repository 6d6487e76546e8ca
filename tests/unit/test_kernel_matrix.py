"""scripts/kernels' pure parts: the kernel-facts oracle (config + modules tree), the modules a variant
drops, how doctor's JSON is judged against a kernel, and the generated block of docs/deploy.md."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
facts = importlib.import_module("kernel_matrix.facts")
matrix = importlib.import_module("kernel_matrix.__main__")

DEBIAN = {"CONFIG_NETFILTER_NETLINK_QUEUE": "m", "CONFIG_NETFILTER_XT_TARGET_NFQUEUE": "m", "CONFIG_NFT_COMPAT": "m",
          "CONFIG_IP_NF_IPTABLES": "m", "CONFIG_IP_NF_FILTER": "m", "CONFIG_NFT_QUEUE": "m",
          "CONFIG_NETFILTER_XT_CONNMARK": "m", "CONFIG_NETFILTER_XT_MATCH_CONNBYTES": "m",
          "CONFIG_NETFILTER_XT_MATCH_CONNTRACK": "m", "CONFIG_IP6_NF_TARGET_REJECT": "m", "CONFIG_NF_REJECT_IPV6": "m",
          "CONFIG_NETFILTER_XT_MATCH_U32": "m", "CONFIG_NFT_CT": "m", "CONFIG_NFT_REJECT_IPV4": "m",
          "CONFIG_NFT_REJECT_IPV6": "m", "CONFIG_NFT_FIB_IPV4": "m", "CONFIG_NFT_FIB_IPV6": "m"}
MODULES = {"nfnetlink_queue", "xt_NFQUEUE", "nft_compat", "ip_tables", "iptable_filter", "nft_queue", "xt_connmark",
           "xt_connbytes", "xt_conntrack", "ip6t_REJECT", "nf_reject_ipv6", "xt_u32", "nft_ct", "nft_reject_ipv4",
           "nft_reject_ipv6", "nft_fib_ipv4", "nft_fib_ipv6"}


def test_a_feature_needs_its_config_and_its_module_file() -> None:
    full = facts.facts(DEBIAN, MODULES)
    assert all(full.present.values()), full.why
    deleted = facts.facts(DEBIAN, MODULES - {"xt_NFQUEUE"})
    assert not deleted.present["xt_nfqueue_nft"] and not deleted.present["xt_nfqueue_legacy"]
    assert deleted.why["xt_nfqueue_nft"] == "CONFIG_NETFILTER_XT_TARGET_NFQUEUE=m but no xt_NFQUEUE.ko"
    unset = facts.facts({**DEBIAN, "CONFIG_NFT_QUEUE": "n"}, MODULES)
    assert not unset.present["nft_queue"] and unset.why["nft_queue"] == "CONFIG_NFT_QUEUE=n"
    built_in = facts.facts({**DEBIAN, "CONFIG_NFT_QUEUE": "y"}, MODULES - {"nft_queue"})
    assert built_in.present["nft_queue"]


def test_config_text_and_tree(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.1.0-57-amd64").write_text(
        "CONFIG_NFT_QUEUE=m\n# CONFIG_NETFILTER_XT_TARGET_NFQUEUE is not set\nCONFIG_LOCALVERSION=\"-x\"\n")
    net = tmp_path / "lib/modules/6.1.0-57-amd64/kernel/net/netfilter"
    net.mkdir(parents=True)
    (net / "nft_queue.ko.xz").write_bytes(b"")
    tree = facts.read_tree(tmp_path)
    assert tree.release == "6.1.0-57-amd64"
    assert tree.present["nft_queue"] and not tree.present["xt_nfqueue_nft"]


def test_a_variant_drops_the_modules_that_need_a_dropped_one() -> None:
    dep = ("kernel/net/ipv6/netfilter/nf_reject_ipv6.ko.xz:\n"
           "kernel/net/ipv6/netfilter/ip6t_REJECT.ko.xz: kernel/net/ipv6/netfilter/nf_reject_ipv6.ko.xz "
           "kernel/net/netfilter/x_tables.ko.xz\n"
           "kernel/net/netfilter/nft_reject_inet.ko.xz: kernel/net/netfilter/nft_reject.ko.xz "
           "kernel/net/ipv6/netfilter/nf_reject_ipv6.ko.xz\n"
           "kernel/net/netfilter/x_tables.ko.xz:\n")
    assert matrix.dropped(("nf_reject_ipv6",), dep) == {"nf_reject_ipv6", "ip6t_REJECT", "nft_reject_inet"}
    assert matrix.dropped(("xt_NFQUEUE",), dep) == {"xt_NFQUEUE"}


def doctor_json(verdict: str, exit_code: int, present: dict[str, bool | None]) -> dict[str, Any]:
    return {"verdict": verdict, "backend": "iptables-nft" if verdict != "cannot" else None,
            "reasons": [] if verdict == "ok" else ["no way to send packets", "to fix: a kernel"],
            "features": [{"name": n, "present": p, "detail": ""} for n, p in present.items()]}


def kernel(name: str, present: dict[str, bool]) -> Any:
    k = matrix.Kernel(matrix.SPECS[name], "linux-image-x", "1", Path("/nonexistent"), "6.1.0-57-amd64")
    k.facts = facts.KernelFacts("6.1.0-57-amd64", present, {n: "" for n in present})
    return k


def test_judge_compares_doctor_with_the_kernel_and_the_expected_verdict() -> None:
    present = {n: True for n in facts.FEATURE_NEEDS}
    result: dict[str, Any] = {"done": True, "steps": {"doctor": {"exit": 0, "seconds": 1.0,
                                                 "report": doctor_json("ok", 0, dict(present))}}}
    assert matrix.judge(kernel("6.1", present), result).problems == []
    # doctor could not tell (a timed-out probe): the matrix wants an answer
    unsure = {**present, "nft_queue": None}
    result["steps"]["doctor"]["report"] = doctor_json("ok", 0, unsure)
    row = matrix.judge(kernel("6.1", present), result)
    assert row.cells["facts"] == "1 differ" and row.problems[0].startswith("doctor vs kernel files: nft_queue")
    # the no-queue kernel: doctor must say cannot (exit 2) and run and the installer must refuse
    gone = {**present, "xt_nfqueue_nft": False, "xt_nfqueue_legacy": False, "nft_queue": False, "connmark": False,
            "connbytes": False, "ip6tables": False}
    refused = {"run": {"exit": 2, "stderr": "netguard run: this kernel cannot enforce: no way to send packets"},
               "install": {"exit": 2, "output": "doctor says netguard cannot enforce here", "written": []}}
    result = {"done": True, "steps": {"doctor": {"exit": 2, "report": doctor_json("cannot", 2, dict(gone))},
                                      "refuse": refused}}
    assert matrix.judge(kernel("6.1-noqueue", gone), result).problems == []
    refused["install"]["written"] = ["etc/systemd/system/netguard.service"]
    assert "install-systemd did not refuse" in matrix.judge(kernel("6.1-noqueue", gone), result).problems[0]


def test_doc_block_is_rewritten_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "deploy.md"
    doc.write_text("# Deploy\n\ntext\n")
    matrix.rewrite_doc(doc, f"{matrix.DOC_BEGIN}\nfirst\n{matrix.DOC_END}")
    matrix.rewrite_doc(doc, f"{matrix.DOC_BEGIN}\nsecond\n{matrix.DOC_END}")
    text = doc.read_text()
    assert text.startswith("# Deploy\n\ntext\n") and "second" in text and "first" not in text
    assert text.count(matrix.DOC_BEGIN) == 1
