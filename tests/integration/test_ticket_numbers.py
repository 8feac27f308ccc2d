"""Ticket numbers under concurrent creation: many threads and processes at once, all distinct and sequential."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from portal import database_of
from portal.db import Database
from portal.models import Customer, Ticket, allocate_ticket_number

pytestmark = pytest.mark.integration

THREADS = 24
PROCESSES = 6
TICKETS_PER_PROCESS = 5


def _create_ticket(database: Database, customer_id: uuid.UUID, now: datetime, title: str) -> str:
    """What the ticket service does: number and insert in one transaction."""
    with database.session() as session:
        number = allocate_ticket_number(session, now)
        session.add(Ticket(customer_id=customer_id, ticket_number=number, title=title))
    return number


def _process_worker(url: str, customer_id: str, now_iso: str, start: multiprocessing.synchronize.Event) -> list[str]:
    database = Database(url)
    try:
        start.wait(30)
        return [
            _create_ticket(database, uuid.UUID(customer_id), datetime.fromisoformat(now_iso), f"p{i}")
            for i in range(TICKETS_PER_PROCESS)
        ]
    finally:
        database.dispose()


def _customer(database: Database) -> uuid.UUID:
    with database.session() as session:
        customer = Customer(name=f"Concurrent {uuid.uuid4().hex[:6]}")
        session.add(customer)
    return customer.id


def _expected(day: str, count: int) -> list[str]:
    return [f"TKT-{day}-{n:03d}" for n in range(1, count + 1)]


def test_many_threads_get_distinct_sequential_numbers(app) -> None:
    database = database_of(app)
    customer_id = _customer(database)
    now = datetime(2024, 11, 24, 12, 0, tzinfo=UTC)
    barrier = threading.Barrier(THREADS)
    numbers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(30)
            number = _create_ticket(database, customer_id, now, f"t{i}")
            with lock:
                numbers.append(number)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert sorted(numbers) == _expected("20241124", THREADS)
    with database.session() as session:
        stored = session.scalars(select(Ticket.ticket_number).order_by(Ticket.ticket_number)).all()
    assert stored == _expected("20241124", THREADS)


def test_many_processes_get_distinct_sequential_numbers(app, settings) -> None:
    database = database_of(app)
    customer_id = _customer(database)
    now = datetime(2024, 11, 25, 8, 30, tzinfo=UTC)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(PROCESSES) as pool:
            pending = [
                pool.apply_async(_process_worker, (settings.database_url, str(customer_id), now.isoformat(), start))
                for _ in range(PROCESSES)
            ]
            start.set()
            results = [number for result in pending for number in result.get(180)]

    total = PROCESSES * TICKETS_PER_PROCESS
    assert sorted(results) == _expected("20241125", total)
    for chunk in (results[i : i + TICKETS_PER_PROCESS] for i in range(0, total, TICKETS_PER_PROCESS)):
        assert chunk == sorted(chunk)  # each process sees its own numbers increase


def test_a_failed_insert_does_not_burn_a_number(app) -> None:
    database = database_of(app)
    customer_id = _customer(database)
    now = datetime(2024, 11, 26, tzinfo=UTC)
    assert _create_ticket(database, customer_id, now, "first") == "TKT-20241126-001"
    with pytest.raises(RuntimeError), database.session() as session:
        allocate_ticket_number(session, now)
        raise RuntimeError("validation failed after numbering")
    assert _create_ticket(database, customer_id, now, "second") == "TKT-20241126-002"
