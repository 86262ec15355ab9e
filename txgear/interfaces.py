# -*- test-case-name: tests.test_store_contract -*-
"""
The seams of txgear, as zope.interface interfaces.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IJobStore(Interface):
    """
    Durable storage for background jobs.

    Every method returns a L{twisted.internet.defer.Deferred} and none blocks
    the reactor: a store backed by a blocking driver runs it in a thread pool
    or uses an asynchronous driver. Writes issued during one reactor turn
    should be committed together, in one transaction.

    Jobs handed to C{add}, C{addMany} and C{remove} are objects with the
    attributes of L{txgear.jobs.StoredJob} (C{key}, C{function}, C{unique},
    C{payload}, C{priority}, C{when}, C{reducer}, C{clientId}, C{attempts},
    C{retryAt}, C{lastError}). Adding a job whose key is stored already
    replaces it (the server does so to record a retry). A job's
    C{key} is a positive integer that the server gives in increasing order of
    submission, continuing after the largest key L{open} loaded; it identifies
    the job in the store and orders jobs of one priority.
    """

    description = Attribute("A short human-readable description, e.g. 'sqlite:/var/lib/gearman.db'.")

    def open():  # type: ignore[misc]
        """
        Connect, create or check the schema, and load every stored job.

        @return: a Deferred firing with a list of L{txgear.jobs.StoredJob},
            ordered by priority (high first), then by key. Fails with
            L{txgear.errors.StoreSchemaError} for a corrupt store or one of an
            unknown schema version (never wiping it), and with
            L{txgear.errors.StoreError} when the store cannot be reached.
        """

    def add(job):  # type: ignore[misc]
        """
        Durably record C{job}.

        @return: a Deferred that fires with C{None} once the job would survive
            a crash of this process, or fails with L{txgear.errors.StoreError}.
        """

    def addMany(jobs):  # type: ignore[misc]
        """
        Durably record every job of the sequence C{jobs}, in one transaction
        with whatever else is written in the same batch.

        @return: a Deferred that fires with C{None} once all of them would
            survive a crash of this process, or fails with
            L{txgear.errors.StoreError} (then none of them is recorded).
        """

    def remove(job):  # type: ignore[misc]
        """
        Forget C{job} (it completed or failed for good). Removing a job that is
        not stored is not an error.

        @return: a Deferred firing with C{None} once the removal is durable.
        """

    # The dead set: background jobs that used up their attempts, kept apart
    # from the queue under their keys (see L{txgear.jobs.DeadJob}). Every
    # dead-set call is ordered with the writes issued before it: it sees them.

    def addDead(job, diedAt):  # type: ignore[misc]
        """
        Move C{job} (an object with the attributes of
        L{txgear.jobs.StoredJob}) from the queue to the dead set, as having
        died at C{diedAt} (Unix milliseconds): its removal from the queue and
        its dead record are written in one transaction, in the batch of its
        turn, so a crash leaves it either queued or dead, never both or
        neither. A job that was not queued is added to the dead set all the
        same.

        @return: a Deferred firing with C{None} once durable.
        """

    def listDead(function=None, limit=None):  # type: ignore[misc]
        """
        The dead set, newest first (by time of death, then key), without
        payloads (each L{txgear.jobs.DeadJob} has C{payload} C{b""} and its
        C{payloadSize}).

        @param function: only the jobs of this function (bytes), or all.
        @param limit: at most this many, or all.
        @return: a Deferred firing with a list of L{txgear.jobs.DeadJob}.
        """

    def retryDead(keys):  # type: ignore[misc]
        """
        Take the dead jobs of C{keys} back into the queue, in one
        transaction: each is queued again under its key with its unique,
        payload, priority, reducer and client id, fresh attempts, no retry
        time and no last error. Keys not in the dead set are skipped.

        @return: a Deferred firing with the list of L{txgear.jobs.StoredJob}
            now queued (payloads included), in the order of C{keys}.
        """

    def purgeDead(keys):  # type: ignore[misc]
        """
        Delete the dead jobs of C{keys} (unknown keys are skipped), in one
        transaction. Trimming the dead set to its limits is a purge of its
        oldest keys.

        @return: a Deferred firing with the number deleted.
        """

    def countDead():  # type: ignore[misc]
        """
        @return: a Deferred firing with the number of jobs in the dead set.
        """

    # Kept results: how background jobs of a C{keep:TTL} policy ended (see
    # L{txgear.jobs.KeptResult}), under their keys, apart from the queue and
    # the dead set; ordered with the writes issued before them, as above.

    def addKept(result):  # type: ignore[misc]
        """
        Remove the job of C{result.key} from the queue and keep C{result}
        (a L{txgear.jobs.KeptResult}), in one transaction in the batch of
        its turn: a crash leaves the job either queued or kept, never both
        or neither. A result of the same key replaces the one kept.

        @return: a Deferred firing with C{None} once durable.
        """

    def listKept(limit=None):  # type: ignore[misc]
        """
        The kept results, newest first (by finish time, then key), without
        their bytes (C{result} C{b""}, C{size} kept).

        @return: a Deferred firing with a list of L{txgear.jobs.KeptResult}.
        """

    def getKept(key):  # type: ignore[misc]
        """
        @return: a Deferred firing with the L{txgear.jobs.KeptResult} of
            C{key}, bytes included, or C{None}; the caller checks
            C{expiresAt} (one expired but not swept yet is returned).
        """

    def expireKept(now):  # type: ignore[misc]
        """
        Delete the kept results whose C{expiresAt} is at most C{now} (Unix
        ms), through an index by expiry: the cost is in the number deleted,
        not the number kept.

        @return: a Deferred firing with the number deleted.
        """

    def purgeKept(keys):  # type: ignore[misc]
        """
        Delete the kept results of C{keys} (unknown keys are skipped).

        @return: a Deferred firing with the number deleted.
        """

    def close():  # type: ignore[misc]
        """
        Flush pending writes and release connections and threads.

        @return: a Deferred firing once everything is written and released.
        """


class IServerPeer(Interface):
    """
    What the job server's state (L{txgear.server._state.JobServerState})
    needs of one connection: a place to send reply bytes. Output is
    buffered by the peer and sent in order.
    """

    def write(data):  # type: ignore[misc]
        """Send the bytes C{data} (one or more whole packets or text lines)."""

    def writeSequence(data):  # type: ignore[misc]
        """Send the list of bytes C{data}, in order, as if joined (large payloads are not copied)."""
