// The per-connection send queue: inline bytes and shared pieces go out in the order they were queued, across
// partial sends and sendmsg calls capped at max_iov entries, and every shared reference is released exactly once.
#include "broker/send_queue.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmq::broker {
namespace {

std::span<const uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void put(send_queue& q, const std::string& s) { append(q.bytes(), s.data(), s.size()); }

// What the next send would carry, as a string.
std::string peek(send_queue& q) {
    const send_queue::next_send n = q.next();
    if (!n.msg) return std::string(reinterpret_cast<const char*>(n.data), n.len);
    std::string s;
    for (size_t i = 0; i < n.msg->msg_iovlen; ++i) {
        const iovec& v = n.msg->msg_iov[i];
        EXPECT_NE(v.iov_len, 0u) << "empty iovec entry " << i;
        s.append(static_cast<const char*>(v.iov_base), v.iov_len);
    }
    return s;
}

// What the next send carries when it is a plain send (one range, no msghdr), as a string; fails otherwise.
std::string plain(send_queue& q) {
    const send_queue::next_send n = q.next();
    EXPECT_EQ(n.msg, nullptr) << "a gathered send where one range was expected";
    return n.msg ? std::string() : std::string(reinterpret_cast<const char*>(n.data), n.len);
}

// Sends the whole batch `chunk` bytes at a time (as a socket taking that much per call would) and returns it.
std::string drain(send_queue& q, size_t chunk) {
    std::string wire;
    for (int guard = 0; guard < 100000; ++guard) {
        const std::string next = peek(q);
        const size_t n = std::min(chunk, next.size());
        wire += next.substr(0, n);
        if (q.sent(n)) {
            q.finish_batch();
            return wire;
        }
    }
    ADD_FAILURE() << "the batch never completed";
    return wire;
}

// The byte buffer keeps every byte through growth, swaps and moves, and gives its memory back on release.
TEST(ByteVec, AppendsSurviveGrowthSwapAndMove) {
    byte_vec v;
    std::string model;
    for (int i = 0; i < 3000; ++i) {
        const std::string piece(static_cast<size_t>(i % 37), static_cast<char>('a' + i % 26));
        append(v, piece.data(), piece.size());
        model += piece;
        ASSERT_GE(v.capacity(), v.size());
    }
    ASSERT_EQ(v.size(), model.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.data()), v.size()), model);
    uint8_t* at = grow(v, 3); // room at the end, not zero-filled but writable
    at[0] = 'x', at[1] = 'y', at[2] = 'z';
    model += "xyz";
    byte_vec w;
    append(w, "tail", 4);
    v.swap(w);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.data()), v.size()), "tail");
    byte_vec moved(std::move(w));
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(moved.data()), moved.size()), model);
    moved.clear();
    EXPECT_TRUE(moved.empty());
    EXPECT_GE(moved.capacity(), model.size()); // clear keeps the memory for the next batch
    moved.release();
    EXPECT_EQ(moved.capacity(), 0u);
}

TEST(SendQueue, InlineBytesGoOutAsOneContiguousSend) {
    send_queue q;
    EXPECT_FALSE(q.has_queued());
    put(q, "abc");
    put(q, "def");
    EXPECT_TRUE(q.has_queued());
    EXPECT_EQ(q.pending_bytes(), 6u);
    q.start_batch();
    EXPECT_FALSE(q.has_queued());
    EXPECT_EQ(plain(q), "abcdef");
    EXPECT_FALSE(q.sent(4));
    EXPECT_EQ(q.pending_bytes(), 2u);
    EXPECT_EQ(peek(q), "ef");
    EXPECT_TRUE(q.sent(2));
    q.finish_batch();
    EXPECT_EQ(q.pending_bytes(), 0u);
}

TEST(SendQueue, ALoneRangeGoesOutAsAPlainSend) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    q.append_shared(big, big->size());
    q.start_batch();
    send_queue::next_send n = q.next();
    EXPECT_EQ(n.msg, nullptr) << "a lone shared piece needs no msghdr";
    EXPECT_EQ(n.data, big->data());
    EXPECT_EQ(n.len, 5u);
    EXPECT_FALSE(q.sent(2));
    EXPECT_EQ(plain(q), "IG]");
    EXPECT_TRUE(q.sent(3));
    q.finish_batch();
    EXPECT_EQ(big->refs(), 1u);

    // Inline bytes and a piece: two ranges, gathered; once the inline part is sent the rest is one range again.
    put(q, "ab");
    q.append_shared(big, big->size());
    q.start_batch();
    n = q.next();
    ASSERT_NE(n.msg, nullptr);
    EXPECT_EQ(n.msg->msg_iovlen, 2u);
    EXPECT_FALSE(q.sent(3));
    EXPECT_EQ(plain(q), "BIG]");
    EXPECT_TRUE(q.sent(4));
    q.finish_batch();
    EXPECT_EQ(big->refs(), 1u);
    big->release();
}

TEST(SendQueue, SharedPiecesAreSplicedInQueueOrder) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    put(q, "a");
    q.append_shared(big, big->size());
    put(q, "bc");
    q.append_shared(big, 3); // a prefix only (a run cut at the outgoing limit)
    q.append_shared(big, big->size());
    put(q, "d");
    EXPECT_EQ(big->refs(), 4u);
    EXPECT_EQ(q.pending_bytes(), 1u + 5 + 2 + 3 + 5 + 1);
    q.start_batch();
    EXPECT_EQ(peek(q), "a[BIG]bc[BI[BIG]d");
    EXPECT_EQ(drain(q, 1000), "a[BIG]bc[BI[BIG]d");
    EXPECT_EQ(big->refs(), 1u); // the batch released its three references
    big->release();
}

TEST(SendQueue, CopyQueuedTakesWhatWaitsNotTheBatchInFlight) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    put(q, "gone");
    q.append_shared(big, 3);
    q.start_batch(); // "gone[BI" is in flight
    put(q, "a");
    q.append_shared(big, big->size());
    put(q, "bc");
    q.append_shared(big, big->size());
    std::vector<uint8_t> out{'>'};
    q.copy_queued(out);
    EXPECT_EQ(std::string(out.begin(), out.end()), ">a[BIG]bc[BIG]") << "appended, in the order it would go";
    EXPECT_EQ(drain(q, 1000), "gone[BI") << "the batch in flight is untouched";
    q.finish_batch();
    out.clear();
    q.copy_queued(out);
    EXPECT_EQ(std::string(out.begin(), out.end()), "a[BIG]bc[BIG]") << "copying took nothing out";
    q.start_batch();
    EXPECT_EQ(drain(q, 1000), "a[BIG]bc[BIG]");
    q.finish_batch();
    out.clear();
    q.copy_queued(out);
    EXPECT_TRUE(out.empty());
    big->release();
}

// A connection closed with its batch part sent: the whole batch in the order it goes, and how much the socket took,
// so that the frames it never took can go back to the session.
TEST(SendQueue, CopyFlightTakesTheWholeBatchAndSaysWhatTheSocketTook) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    EXPECT_FALSE(q.flight_unsent());
    put(q, "ab");
    q.append_shared(big, big->size());
    put(q, "cd");
    q.start_batch();
    put(q, "queued");
    EXPECT_TRUE(q.flight_unsent());
    EXPECT_FALSE(q.sent(4)); // "ab[B" taken
    std::vector<uint8_t> out{'>'};
    EXPECT_EQ(q.copy_flight(out), 4u);
    EXPECT_EQ(std::string(out.begin(), out.end()), ">ab[BIG]cd") << "appended, whole, in the order it goes";
    EXPECT_TRUE(q.flight_unsent());
    EXPECT_EQ(drain(q, 1000), "IG]cd") << "copying took nothing out";
    EXPECT_FALSE(q.flight_unsent());
    q.start_batch(); // inline bytes only
    out.clear();
    EXPECT_EQ(q.copy_flight(out), 0u);
    EXPECT_EQ(std::string(out.begin(), out.end()), "queued");
    EXPECT_EQ(drain(q, 2), "queued");
    EXPECT_FALSE(q.flight_unsent());
    out.clear();
    EXPECT_EQ(q.copy_flight(out), 0u);
    EXPECT_TRUE(out.empty()) << "no batch, nothing to copy";
    big->release();
}

TEST(SendQueue, CopyFlightKeepsPiecesWhereverTheyStand) {
    shared_bytes* a = shared_bytes::make(bytes_of("<A>"));
    shared_bytes* b = shared_bytes::make(bytes_of("<B>"));
    send_queue q;
    q.append_shared(a, a->size()); // a piece first,
    q.append_shared(b, b->size()); // one right after it,
    put(q, "x");
    q.append_shared(a, a->size()); // and one last
    q.start_batch();
    EXPECT_FALSE(q.sent(4)); // from the first piece into the second
    std::vector<uint8_t> out;
    EXPECT_EQ(q.copy_flight(out), 4u);
    EXPECT_EQ(std::string(out.begin(), out.end()), "<A><B>x<A>");
    EXPECT_FALSE(q.sent(3)); // "B>x"
    out.clear();
    EXPECT_EQ(q.copy_flight(out), 7u) << "what the socket took, over every partial send";
    EXPECT_EQ(std::string(out.begin(), out.end()), "<A><B>x<A>");
    EXPECT_EQ(drain(q, 1000), "<A>");
    a->release();
    b->release();
}

TEST(SendQueue, PartialSendsResumeInsideAndBetweenPieces) {
    shared_bytes* p1 = shared_bytes::make(bytes_of("0123456789"));
    shared_bytes* p2 = shared_bytes::make(bytes_of("ABCDEFGHIJ"));
    const std::string expect = "xy0123456789zABCDEFGHIJ0123456789w";
    for (size_t chunk = 1; chunk <= expect.size(); ++chunk) {
        send_queue q;
        put(q, "xy");
        q.append_shared(p1, 10);
        put(q, "z");
        q.append_shared(p2, 10);
        q.append_shared(p1, 10);
        put(q, "w");
        q.start_batch();
        EXPECT_EQ(drain(q, chunk), expect) << "chunk " << chunk;
    }
    EXPECT_EQ(p1->refs(), 1u);
    EXPECT_EQ(p2->refs(), 1u);
    p1->release();
    p2->release();
}

TEST(SendQueue, MorePiecesThanOneSendmsgTakesGoOutInSeveralSends) {
    shared_bytes* p = shared_bytes::make(bytes_of("P"));
    send_queue q;
    std::string expect;
    const size_t pieces = send_queue::max_iov * 2 + 7;
    for (size_t i = 0; i < pieces; ++i) {
        const std::string tag = std::to_string(i % 10);
        put(q, tag);
        q.append_shared(p, 1);
        expect += tag + "P";
    }
    q.start_batch();
    const send_queue::next_send first = q.next();
    ASSERT_NE(first.msg, nullptr);
    EXPECT_EQ(first.msg->msg_iovlen, send_queue::max_iov);
    // A socket that takes everything it is offered still needs several sends: each is capped at max_iov entries.
    std::string wire;
    int sends = 0;
    for (;;) {
        const std::string next = peek(q);
        ASSERT_FALSE(next.empty());
        wire += next;
        ++sends;
        if (q.sent(next.size())) break;
    }
    q.finish_batch();
    EXPECT_FALSE(q.has_queued());
    EXPECT_EQ(q.pending_bytes(), 0u);
    EXPECT_EQ(wire, expect);
    EXPECT_EQ(sends, static_cast<int>((2 * pieces + send_queue::max_iov - 1) / send_queue::max_iov)); // tag + piece
    // After a burst the piece lists are given back; the queue works as before.
    put(q, "again");
    q.append_shared(p, 1);
    q.start_batch();
    EXPECT_EQ(drain(q, 3), "againP");
    EXPECT_EQ(p->refs(), 1u);
    p->release();
}

TEST(SendQueue, WhatIsQueuedDuringASendWaitsForTheNextBatch) {
    shared_bytes* p = shared_bytes::make(bytes_of("S1"));
    send_queue q;
    put(q, "a");
    q.append_shared(p, 2);
    q.start_batch();
    put(q, "b");
    q.append_shared(p, 2);
    EXPECT_TRUE(q.has_queued());
    EXPECT_EQ(q.pending_bytes(), 6u);
    EXPECT_EQ(drain(q, 2), "aS1");
    EXPECT_EQ(p->refs(), 2u);
    q.start_batch();
    EXPECT_EQ(drain(q, 100), "bS1");
    EXPECT_EQ(p->refs(), 1u);
    p->release();
}

TEST(SendQueue, DestroyingAQueueReleasesQueuedAndInFlightPieces) {
    shared_bytes* p = shared_bytes::make(bytes_of("xyz"));
    {
        send_queue q;
        q.append_shared(p, 3);
        q.start_batch();
        q.append_shared(p, 3);
        EXPECT_EQ(p->refs(), 3u);
    }
    EXPECT_EQ(p->refs(), 1u);
    p->release();
}

TEST(SendQueue, AMessagePayloadIsSentFromTheMessageAndReleasedAfterwards) {
    const std::string body = "payload-bytes";
    session::message* msg = session::message::make("t/x", bytes_of(body), 1, false);
    msg->add_ref(); // the test's own reference, checked below through a second release
    {
        send_queue q;
        put(q, "<head1>");
        q.append_payload(msg);
        put(q, "<head2>");
        q.append_payload(msg);
        EXPECT_EQ(q.pending_bytes(), 14u + 2 * body.size());
        q.start_batch();
        EXPECT_EQ(drain(q, 5), "<head1>" + body + "<head2>" + body);
        q.append_payload(msg); // still queued when the queue goes: released by the destructor
    }
    // Both of the queue's references are gone: one release leaves the test's, the second frees the message
    // (ASan reports a leak or a double free if the count is wrong).
    msg->release();
    msg->release();
}

TEST(SendQueue, TrimKeepsPiecesThatAreQueuedOrInFlight) {
    shared_bytes* p = shared_bytes::make(bytes_of("PP"));
    send_queue q;
    q.append_shared(p, 2);
    q.trim(); // queued: kept
    q.start_batch();
    q.trim(); // in flight: kept (its iovecs may be in use)
    EXPECT_EQ(p->refs(), 2u);
    EXPECT_EQ(drain(q, 1), "PP");
    EXPECT_EQ(p->refs(), 1u);
    q.trim();
    put(q, "x");
    q.append_shared(p, 2);
    q.start_batch();
    EXPECT_EQ(drain(q, 2), "xPP");
    p->release();
}

TEST(SendQueue, EmptyPiecesAreNotQueued) {
    shared_bytes* p = shared_bytes::make(bytes_of("xyz"));
    send_queue q;
    q.append_shared(p, 0);
    EXPECT_FALSE(q.has_queued());
    EXPECT_EQ(p->refs(), 1u);
    p->release();
}

// A backlog goes in batches of about chunk_bytes (what the socket took of one is freed before the next goes), every
// byte and piece in the order queued, and pending_bytes counts all that is not sent yet.
TEST(SendQueue, ABacklogGoesInChunksInQueueOrder) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    std::string model;
    const std::string line(1000, 'x');
    for (int i = 0; i < 1000; ++i) { // ~1 MB of frames, a piece after every tenth
        const std::string frame = std::to_string(i) + line;
        put(q, frame);
        model += frame;
        if (i % 10 == 0) {
            q.append_shared(big, big->size());
            model += "[BIG]";
        }
    }
    EXPECT_EQ(q.pending_bytes(), model.size());
    EXPECT_EQ(big->refs(), 101u);
    std::vector<uint8_t> copy;
    q.copy_queued(copy);
    EXPECT_EQ(std::string(copy.begin(), copy.end()), model) << "copy_queued splices the chunks in order";
    std::string wire;
    size_t batches = 0;
    while (q.has_queued()) {
        q.start_batch();
        ++batches;
        const std::string batch = drain(q, 70000);
        EXPECT_LE(batch.size(), send_queue::chunk_bytes + line.size() + 10 + 20 * 5) << "batch " << batches;
        wire += batch;
        EXPECT_EQ(q.pending_bytes(), model.size() - wire.size());
    }
    EXPECT_EQ(wire, model);
    EXPECT_GE(batches, model.size() / (send_queue::chunk_bytes + 2000)) << "one batch a chunk";
    EXPECT_EQ(big->refs(), 1u);
    big->release();
}

// Frames queued as shared pieces only (a fan-out's frames of 1 KiB and more), or as an inline head with the payload
// sent from the message, are chunked by their bytes too, not by the inline bytes alone; a chunk ends at a frame.
TEST(SendQueue, PiecesCountTowardAChunk) {
    shared_bytes* frame = shared_bytes::make(bytes_of(std::string(2000, 'f')));
    const std::string body(3000, 'p');
    session::message* msg = session::message::make("t/x", bytes_of(body), 0, false);
    {
        send_queue q;
        for (int i = 0; i < 1000; ++i) // 2 MB of shared frames, nothing inline
            q.append_shared(frame, frame->size());
        for (int i = 0; i < 700; ++i) { // 2.1 MB of payloads behind 8-byte heads
            put(q, "<head" + std::to_string(i % 10) + "/>");
            q.append_payload(msg);
        }
        const size_t total = q.pending_bytes();
        EXPECT_EQ(total, 1000u * 2000 + 700u * (8 + 3000));
        size_t sent = 0, batches = 0;
        while (q.has_queued()) {
            q.start_batch();
            ++batches;
            const std::string batch = drain(q, 1 << 30);
            EXPECT_LE(batch.size(), send_queue::chunk_bytes + 3008) << "batch " << batches;
            if (sent >= 2000000 && !batch.empty()) {
                EXPECT_EQ(batch.substr(0, 5), "<head") << "a chunk begins at a frame";
            }
            sent += batch.size();
        }
        EXPECT_EQ(sent, total);
        EXPECT_GE(batches, total / (send_queue::chunk_bytes + 3008));
    }
    EXPECT_EQ(frame->refs(), 1u);
    frame->release();
    msg->release(); // the last reference: ASan reports a leak or a double free if the queue's count was wrong
}

// A reader that keeps a backlog: chunks are added while earlier ones go, for many times the backlog's size, and the
// order holds throughout.
TEST(SendQueue, ABacklogRefilledWhileItDrainsKeepsItsOrder) {
    send_queue q;
    std::string model, wire;
    size_t next = 0;
    const auto fill = [&](size_t until) {
        while (q.pending_bytes() < until) {
            const std::string frame = "<" + std::to_string(next++) + std::string(3000, '.') + ">";
            put(q, frame);
            model += frame;
        }
    };
    fill(4 * send_queue::chunk_bytes);
    for (int round = 0; round < 60; ++round) {
        q.start_batch();
        wire += drain(q, 50000);
        fill(4 * send_queue::chunk_bytes);
    }
    while (q.has_queued()) {
        q.start_batch();
        wire += drain(q, 50000);
    }
    EXPECT_GT(wire.size(), 50 * send_queue::chunk_bytes);
    EXPECT_TRUE(wire == model) << "the wire differs from what was queued (" << wire.size() << " of " << model.size()
                               << " bytes)";
}

// A close sends what is queued in one batch, its answers at the end included: unseal joins the chunks.
TEST(SendQueue, UnsealMakesTheWholeBacklogOneBatch) {
    shared_bytes* big = shared_bytes::make(bytes_of("[BIG]"));
    send_queue q;
    std::string model;
    const std::string block(100000, 'b');
    for (int i = 0; i < 7; ++i) {
        put(q, block);
        q.append_shared(big, 3);
        model += block + "[BI";
    }
    put(q, "answers");
    model += "answers";
    q.unseal(model.size() - 1); // past the bound: left in chunks
    q.start_batch();
    const std::string first = drain(q, 1 << 20);
    EXPECT_LT(first.size(), model.size() / 2);
    q.unseal(SIZE_MAX);
    EXPECT_EQ(q.pending_bytes(), model.size() - first.size());
    q.start_batch();
    EXPECT_EQ(first + drain(q, 1 << 20), model);
    EXPECT_FALSE(q.has_queued());
    EXPECT_EQ(big->refs(), 1u);
    big->release();
}

// A backlog of large frames copied into the queue holds about its bytes: a chunk that a frame took past its room is
// cut to its size when sealed, rather than waiting with twice that allocated.
TEST(SendQueue, ABacklogOfLargeFramesHoldsAboutItsBytes) {
    for (const size_t frame : {size_t{1000}, size_t{20000}, size_t{100000}}) {
        send_queue q;
        const std::string f(frame, 'L');
        while (q.pending_bytes() < 8 * send_queue::chunk_bytes)
            put(q, f);
        const size_t pending = q.pending_bytes();
        EXPECT_LE(q.held_bytes(),
                  pending + pending / 8 + send_queue::chunk_bytes + send_queue::chunk_bytes / 16 + frame)
            << "frames of " << frame << " bytes: " << q.held_bytes() << " held for " << pending;
    }
}

// Dropping or destroying a queue with a backlog releases the pieces of every chunk once.
TEST(SendQueue, DroppingABacklogReleasesItsChunksPieces) {
    shared_bytes* p = shared_bytes::make(bytes_of("xyz"));
    {
        send_queue q;
        const std::string block(200000, 'd');
        for (int i = 0; i < 5; ++i) {
            put(q, block);
            q.append_shared(p, 3);
        }
        q.start_batch(); // the first chunk in flight, the others queued
        EXPECT_EQ(p->refs(), 6u);
        q.drop_queued();
        EXPECT_FALSE(q.has_queued());
        EXPECT_EQ(q.pending_bytes(), 2 * block.size() + 6) << "only the batch in flight is left";
        for (int i = 0; i < 3; ++i) {
            put(q, block);
            q.append_shared(p, 3);
        }
    } // the batch in flight and the new backlog go with the queue
    EXPECT_EQ(p->refs(), 1u);
    p->release();
}

} // namespace
} // namespace ringmq::broker
