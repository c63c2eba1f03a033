"""A fake `amdsmi` (ROCm's Python bindings) for the agent's tests: put tests/fakes/amd first on sys.path.

Shaped from the bindings' documented API (py-interface/README.md of ROCm/amdsmi): amdsmi_init, amdsmi_shut_down,
amdsmi_get_processor_handles, amdsmi_get_gpu_asic_info (market_name), amdsmi_get_gpu_driver_info (driver_version),
amdsmi_get_gpu_activity (gfx_activity, %), amdsmi_get_gpu_vram_usage (vram_total, vram_used, in MB),
amdsmi_get_temp_metric (sensor type, metric; degrees C), amdsmi_get_power_info (current_socket_power,
average_socket_power, in W; "N/A" where the GPU does not say). Failures raise AmdSmiLibraryException.

Configure it through the module globals (reset() restores the defaults):
  FAIL_INIT   amdsmi_init raises, as on a host without the amdgpu driver
  DEVICES     one dict per GPU: market_name, driver, gfx, vram_total_mb, vram_used_mb, temps ({sensor: C}), power
              (current W or "N/A"), average_power (W)
"""
from enum import IntEnum


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code, err_info=""):
        super().__init__(f"Error code:\n\t{err_code} | {err_info}")
        self.err_code, self.err_info = err_code, err_info


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1


NOT_SUPPORTED = 2
FAIL_INIT = False
DEVICES = []
init_calls = shutdown_calls = 0
_initialized = False


def reset():
    global FAIL_INIT, DEVICES, init_calls, shutdown_calls, _initialized
    FAIL_INIT = False
    DEVICES = [
        # A data-centre GPU: no edge sensor (its hotspot stands in), no current power (only the average).
        {"market_name": "AMD Instinct MI300X", "driver": "6.8.5", "gfx": 93, "vram_total_mb": 196592,
         "vram_used_mb": 40960, "temps": {AmdSmiTemperatureType.HOTSPOT: 71}, "power": "N/A", "average_power": 612},
        {"market_name": "AMD Radeon RX 7900 XTX", "driver": "6.8.5", "gfx": 4, "vram_total_mb": 24560,
         "vram_used_mb": 512, "temps": {AmdSmiTemperatureType.EDGE: 45, AmdSmiTemperatureType.HOTSPOT: 52},
         "power": 38, "average_power": 40},
    ]
    init_calls = shutdown_calls = 0
    _initialized = False


reset()


class _Handle:
    def __init__(self, index):
        self.index = index


def _device(handle):
    if not _initialized:
        raise AmdSmiLibraryException(32, "AMDSMI_STATUS_NOT_INIT")
    return DEVICES[handle.index]


def amdsmi_init(flag=AmdSmiInitFlags.INIT_AMD_GPUS):
    global init_calls, _initialized
    init_calls += 1
    if FAIL_INIT:
        raise AmdSmiLibraryException(8, "AMDSMI_STATUS_DRIVER_NOT_LOADED")
    _initialized = True


def amdsmi_shut_down():
    global shutdown_calls, _initialized
    shutdown_calls += 1
    _initialized = False


def amdsmi_get_processor_handles():
    if not _initialized:
        raise AmdSmiLibraryException(32, "AMDSMI_STATUS_NOT_INIT")
    return [_Handle(i) for i in range(len(DEVICES))]


def amdsmi_get_gpu_asic_info(handle):
    device = _device(handle)
    return {"market_name": device["market_name"], "vendor_id": 0x1002, "device_id": 0x74A1, "rev_id": 0,
            "asic_serial": "0x1234"}


def amdsmi_get_gpu_driver_info(handle):
    return {"driver_name": "amdgpu", "driver_version": _device(handle)["driver"], "driver_date": "2015/01/01 00:00"}


def amdsmi_get_gpu_activity(handle):
    return {"gfx_activity": _device(handle)["gfx"], "umc_activity": 0, "mm_activity": "N/A"}


def amdsmi_get_gpu_vram_usage(handle):
    device = _device(handle)
    return {"vram_total": device["vram_total_mb"], "vram_used": device["vram_used_mb"]}


def amdsmi_get_temp_metric(handle, sensor_type, metric):
    temps = _device(handle)["temps"]
    if sensor_type not in temps:
        raise AmdSmiLibraryException(NOT_SUPPORTED, "AMDSMI_STATUS_NOT_SUPPORTED")
    return temps[sensor_type]


def amdsmi_get_power_info(handle):
    device = _device(handle)
    return {"current_socket_power": device["power"], "average_socket_power": device["average_power"],
            "gfx_voltage": "N/A", "soc_voltage": "N/A", "mem_voltage": "N/A", "power_limit": 750}
