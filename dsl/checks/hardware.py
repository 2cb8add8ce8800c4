"""Built-in hardware profiles and the settings a `hardware` section may give."""

from __future__ import annotations

# Dense peak for 16-bit matmuls; bandwidths per direction per device.
PROFILES: dict[str, dict[str, float]] = {
    # H100 SXM5: NVLink 4 (900 GB/s bidirectional), 400 Gb/s InfiniBand NDR per GPU.
    "h100": {
        "peak_tflops": 989.0,
        "efficiency": 0.5,
        "memory_gb": 80.0,
        "devices_per_node": 8,
        "intra_gbps": 450.0,
        "intra_latency_us": 3.0,
        "inter_gbps": 50.0,
        "inter_latency_us": 8.0,
        "hbm_gbps": 3350.0,  # HBM3, 3.35 TB/s (NVIDIA H100 SXM datasheet)
    },
    # A100 SXM4 80GB: NVLink 3 (600 GB/s bidirectional), 200 Gb/s InfiniBand HDR per GPU.
    "a100": {
        "peak_tflops": 312.0,
        "efficiency": 0.5,
        "memory_gb": 80.0,
        "devices_per_node": 8,
        "intra_gbps": 300.0,
        "intra_latency_us": 3.0,
        "inter_gbps": 25.0,
        "inter_latency_us": 8.0,
        "hbm_gbps": 2039.0,  # HBM2e, 2.0 TB/s (NVIDIA A100 80GB SXM datasheet)
    },
}
# H200 SXM: the H100's compute and links with 141 GB of HBM3e at 4.8 TB/s (NVIDIA H200 datasheet).
PROFILES["h200"] = {**PROFILES["h100"], "memory_gb": 141.0, "hbm_gbps": 4800.0}

SETTINGS: dict[str, str] = {
    "peak_tflops": "peak dense FLOP/s of one device, in TFLOP/s, at the spec's dtype",
    "efficiency": "fraction of peak that compute reaches (0 < efficiency <= 1)",
    "memory_gb": "memory of one device, in GB (10^9 bytes)",
    "devices_per_node": "devices joined by the fast intra-node links",
    "intra_gbps": "intra-node bandwidth per device and direction, in GB/s",
    "intra_latency_us": "intra-node latency per message, in microseconds",
    "inter_gbps": "inter-node bandwidth per device and direction, in GB/s",
    "inter_latency_us": "inter-node latency per message, in microseconds",
    "hbm_gbps": "memory (HBM) bandwidth of one device, in GB/s: bounds a serving decode step",
}
# Settings a hardware section described in full may leave out: the serving cost needs them.
OPTIONAL = ("hbm_gbps",)
