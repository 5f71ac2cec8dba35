#!/usr/bin/env python3
"""A web checkout against atp, in Python with grpcio.

The stubs are generated from the repository's proto/ when the script starts
(grpcio-tools), into a temporary directory: nothing generated is kept in git.

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/checkout.py --addr 127.0.0.1:50051

What it does, as docs/API.md's checkout flow describes:
  1. configures a warehouse and a channel (no state given: ACTIVE) and
     receives 5 units (ids carry a run id, so a second run starts afresh);
  2. reads the channel's availability;
  3. holds 2 units with a reservation id fixed once per checkout attempt,
     repeating the same request on an unknown outcome (UNAVAILABLE,
     DEADLINE_EXCEEDED, CANCELLED without an ErrorInfo, RESOURCE_EXHAUSTED
     with reason OVERLOADED; not DISK_FULL): a repeat gets the first answer;
  4. repeats the Reserve on purpose and checks it is the same reservation;
  5. commits it;
  6. asks for more than is left and reads the reason (INSUFFICIENT_STOCK) and
     the units available from the error's google.rpc.ErrorInfo.

It prints one line per step and exits 0 only if every check held.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = [
    "atp/v1/availability.proto",
    "atp/v1/config.proto",
    "atp/v1/admin.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
]
# Unknown outcome: the request may or may not have been applied; repeat it
# with the same id. Every other error is an answer (see is_unknown_outcome).
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# RESOURCE_EXHAUSTED is worth repeating only when the node was overloaded;
# DISK_FULL stays until an operator frees space, so repeating cannot help.
RETRYABLE_EXHAUSTED_REASONS = {"OVERLOADED"}
ATTEMPTS = 5
CALL_TIMEOUT_S = 5.0


def load_stubs():
    """Generates the Python stubs from proto/ and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="atp-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"checkout.py: protoc failed on {PROTO_ROOT}")
    sys.path.insert(0, out)
    names = [
        "atp.v1.availability_pb2",
        "atp.v1.availability_pb2_grpc",
        "atp.v1.config_pb2",
        "atp.v1.config_pb2_grpc",
        "google.rpc.status_pb2",
        "google.rpc.error_details_pb2",
    ]
    return [importlib.import_module(name) for name in names]


(availability_pb2, availability_grpc, config_pb2, config_grpc, status_pb2, details_pb2) = load_stubs()


def error_info(error):
    """The google.rpc.ErrorInfo of a failed call (reason, metadata), or None."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None


def is_unknown_outcome(error):
    """Whether to repeat the request: the Rust SDK's retry rules (docs/API.md)."""
    code = error.code()
    if code in RETRYABLE:
        return True
    if code == grpc.StatusCode.CANCELLED:
        return error_info(error) is None  # the connection broke
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        info = error_info(error)
        return info is not None and info.reason in RETRYABLE_EXHAUSTED_REASONS
    return False


def call_with_retries(method, request):
    """Calls `method`; on an unknown outcome repeats the same request."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            if not is_unknown_outcome(error) or attempt == ATTEMPTS:
                raise
            time.sleep(0.05 * 2**attempt)  # backoff before the repeat
    raise AssertionError("unreachable")


def check(condition, what):
    if not condition:
        sys.exit(f"checkout.py: FAILED: {what}")
    print(f"ok  {what}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("ATP_ADDR", "127.0.0.1:50051"))
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    location, channel, sku = f"py-dc-{run}", f"py-web-{run}", f"py-mug-{run}"
    with grpc.insecure_channel(args.addr) as connection:
        grpc.channel_ready_future(connection).result(timeout=CALL_TIMEOUT_S)
        config = config_grpc.ConfigServiceStub(connection)
        atp = availability_grpc.AvailabilityServiceStub(connection)

        # 1. Configuration and stock (idempotent: ids are fixed for this run).
        stored = call_with_retries(
            config.UpsertLocation,
            config_pb2.UpsertLocationRequest(
                location=config_pb2.Location(
                    location_id=location, kind=config_pb2.LOCATION_KIND_WAREHOUSE
                )
            ),
        ).location
        check(stored.state == config_pb2.LIFECYCLE_STATE_ACTIVE, "a location without a state is ACTIVE")
        call_with_retries(
            config.UpsertChannel,
            config_pb2.UpsertChannelRequest(
                channel=config_pb2.Channel(channel_id=channel, location_ids=[location])
            ),
        )
        received = call_with_retries(
            atp.ApplyStockEvents,
            availability_pb2.ApplyStockEventsRequest(
                events=[
                    availability_pb2.StockEvent(
                        event_id=f"grn-{run}",
                        sku=sku,
                        location_id=location,
                        received=availability_pb2.Received(quantity=5),
                    )
                ]
            ),
        ).results[0]
        check(received.outcome == availability_pb2.STOCK_EVENT_OUTCOME_APPLIED, "5 units received")

        # 2. What the channel may promise.
        shown = call_with_retries(
            atp.GetAvailability,
            availability_pb2.GetAvailabilityRequest(skus=[sku], channel_ids=[channel]),
        ).skus[0]
        check(shown.channels[0].atp == 5, "the channel shows 5")

        # 3. Hold: the id is fixed once per checkout attempt, never per call.
        reservation_id = f"checkout-cart-{run}-1"
        hold = availability_pb2.ReserveRequest(
            reservation_id=reservation_id,
            channel_id=channel,
            lines=[availability_pb2.ReservationLine(sku=sku, location_id=location, quantity=2)],
            ttl_seconds=600,
        )
        first = call_with_retries(atp.Reserve, hold).reservation
        check(first.state == availability_pb2.RESERVATION_STATE_HELD, "2 units held for 10 minutes")

        # 4. A repeat (as after a lost answer) is the first answer, not a second hold.
        again = call_with_retries(atp.Reserve, hold).reservation
        check(again == first, "a repeated Reserve returns the first answer")
        left = call_with_retries(
            atp.GetAvailability,
            availability_pb2.GetAvailabilityRequest(skus=[sku], channel_ids=[channel]),
        ).skus[0]
        check(left.channels[0].atp == 3, "the repeat held nothing more (3 left)")

        # 5. The order is placed.
        committed = call_with_retries(
            atp.Commit, availability_pb2.CommitRequest(reservation_id=reservation_id)
        ).reservation
        check(committed.state == availability_pb2.RESERVATION_STATE_COMMITTED, "committed")

        # 6. Too much: refused with a reason and the units available.
        try:
            call_with_retries(
                atp.Reserve,
                availability_pb2.ReserveRequest(
                    reservation_id=f"checkout-cart-{run}-2",
                    channel_id=channel,
                    lines=[availability_pb2.ReservationLine(sku=sku, location_id=location, quantity=50)],
                ),
            )
            check(False, "a Reserve of 50 is refused")
        except grpc.RpcError as error:
            info = error_info(error)
            check(error.code() == grpc.StatusCode.FAILED_PRECONDITION, "a Reserve of 50 is FAILED_PRECONDITION")
            check(
                info is not None and info.domain == "atp.v1" and info.reason == "INSUFFICIENT_STOCK",
                "its reason is INSUFFICIENT_STOCK",
            )
            check(info.metadata["available"] == "3", "and 3 are available")
    print("checkout.py: all checks passed")


if __name__ == "__main__":
    main()
