package fusion.streams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.core.StreamWriteFeature;
import com.fasterxml.jackson.core.util.ByteArrayBuilder;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The join and the fusion, one instance per task: the prediction events of a request are
 * kept in the task's store ({@link #STORE}) until every model reported, then fused into one
 * result (status complete); a request still pending {@link #TIMEOUT_MS} of wall clock after
 * its first event arrived is fused from the members it has (status partial) by a wall-clock
 * punctuator.
 *
 * <p>The fusion is the worker's soft_vote with the benchmark's models, weights and labels
 * (bench/kit.py): the members' probabilities averaged with the configured weights
 * renormalised over the members present, summed in configured model order (as the worker
 * does, so the doubles are the same), the label their argmax (the first on ties). The result
 * has the worker's fields in the worker's order (schemas/fused.v1.json).
 *
 * <p>As the worker's join, a request id is remembered for five timeouts after it was fused
 * (at most {@link #FUSED_MEMORY_COUNT} ids) so that a straggler, or a repeated event, does
 * not open it again; a model that already reported for a pending request is ignored. That
 * memory is not in the store: it starts empty after a restart or a rebalance. Events that do
 * not parse, name another model or carry other probabilities are counted and dropped (the
 * worker sends them to its dead-letter topic; the benchmark's events are all valid).
 */
final class FusionJoin implements Processor<String, byte[], String, byte[]> {
    /** The store's name: its changelog is {@code <application.id>-pending-changelog}. */
    static final String STORE = "pending";

    static final String[] MODELS = {"bert-base", "roberta-large", "distilbert"};
    static final double[] WEIGHTS = {0.3, 0.4, 0.3};
    static final String[] LABELS = {"negative", "neutral", "positive"};
    static final String STRATEGY = "soft_vote";
    /** The worker's defaults: [join] timeout_ms, [fusion] prob_tolerance, fused memory. */
    static final long TIMEOUT_MS = 1000;
    static final double PROB_TOLERANCE = 1e-3;
    static final long FUSED_MEMORY_MS = 5 * TIMEOUT_MS;
    static final int FUSED_MEMORY_COUNT = 100_000;
    /**
     * How often the punctuator looks for requests past their deadline: about every poll of
     * the stream thread, as the worker looks at every turn of its loop (a look costs one
     * peek at the oldest deadline).
     */
    static final Duration PUNCTUATE_EVERY = Duration.ofMillis(10);

    private static final int M = MODELS.length;
    private static final int K = LABELS.length;
    private static final JsonFactory JSON = JsonFactory.builder()
            .enable(StreamReadFeature.USE_FAST_DOUBLE_PARSER)
            .enable(StreamWriteFeature.USE_FAST_DOUBLE_WRITER)
            .build();

    private ProcessorContext<String, byte[]> context;
    private KeyValueStore<String, Pending> store;
    /** (deadline, request id) of the requests opened by this task, in opening order. */
    private final ArrayDeque<KeyValue<Long, String>> deadlines = new ArrayDeque<>();
    /** Fused request id -> until when it is remembered, oldest first. */
    private final LinkedHashMap<String, Long> fused = new LinkedHashMap<>(1024, 0.75f, false) {
        private static final long serialVersionUID = 1L;

        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Long> eldest) {
            return size() > FUSED_MEMORY_COUNT;
        }
    };
    private final ByteArrayBuilder out = new ByteArrayBuilder(1024);
    private long dropped;

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.context = context;
        this.store = context.getStateStore(STORE);
        // The store is restored from its changelog before init: rebuild the deadlines.
        List<KeyValue<Long, String>> restored = new ArrayList<>();
        try (KeyValueIterator<String, Pending> all = store.all()) {
            while (all.hasNext()) {
                KeyValue<String, Pending> kv = all.next();
                restored.add(KeyValue.pair(kv.value.openedMs + TIMEOUT_MS, kv.key));
            }
        }
        restored.sort(Comparator.<KeyValue<Long, String>, Long>comparing(kv -> kv.key)
                .thenComparing(kv -> kv.value));
        deadlines.addAll(restored);
        context.schedule(PUNCTUATE_EVERY, PunctuationType.WALL_CLOCK_TIME, this::expire);
    }

    @Override
    public void process(Record<String, byte[]> record) {
        long now = context.currentSystemTimeMs();
        Event ev = Event.parse(record.value(), record.timestamp());
        if (ev == null) {
            dropped++;
            return;
        }
        String rid = ev.requestId;
        Long remembered = fused.get(rid);
        if (remembered != null && remembered > now) {
            return; // late: the request was fused already
        }
        Pending p = store.get(rid);
        if (p == null) {
            p = new Pending(now, ev.ts);
            deadlines.addLast(KeyValue.pair(now + TIMEOUT_MS, rid));
        } else if (p.probs[ev.model] != null) {
            return; // a repeated member
        }
        p.add(ev);
        if (p.count() == M) {
            store.delete(rid);
            emit(rid, p, now);
        } else {
            store.put(rid, p);
        }
    }

    /** The punctuator: fuse every request whose deadline passed, as partial. */
    private void expire(long now) {
        while (!deadlines.isEmpty() && deadlines.peekFirst().key <= now) {
            KeyValue<Long, String> due = deadlines.pollFirst();
            Pending p = store.get(due.value);
            // Absent: fused when its last member came; another opening: not due yet.
            if (p != null && p.openedMs + TIMEOUT_MS == due.key) {
                store.delete(due.value);
                emit(due.value, p, now);
            }
        }
        Iterator<Map.Entry<String, Long>> it = fused.entrySet().iterator();
        while (it.hasNext() && it.next().getValue() <= now) {
            it.remove();
        }
    }

    private void emit(String rid, Pending p, long now) {
        fused.put(rid, now + FUSED_MEMORY_MS);
        context.forward(new Record<>(rid, result(rid, p, now), now));
    }

    @Override
    public void close() {
        if (dropped > 0) {
            System.err.printf("task %s: %d events dropped (invalid)%n", context.taskId(), dropped);
        }
    }

    // -- the fusion ------------------------------------------------------------------------

    /** The fused result's JSON bytes, fields as the worker writes them. */
    byte[] result(String rid, Pending p, long now) {
        // Weighted sums in configured model order, as the worker's array code.
        double total = 0.0;
        double[] acc = new double[K];
        for (int j = 0; j < M; j++) {
            double[] probs = p.probs[j];
            if (probs != null) {
                total += WEIGHTS[j];
                for (int k = 0; k < K; k++) {
                    acc[k] += WEIGHTS[j] * probs[k];
                }
            }
        }
        int label = 0;
        for (int k = 0; k < K; k++) {
            acc[k] /= total;
            if (acc[k] > acc[label]) {
                label = k;
            }
        }
        double agreement = 0.0;
        for (int j = 0; j < M; j++) {
            if (p.probs[j] != null && argmax(p.probs[j]) == label) {
                agreement += WEIGHTS[j] / total;
            }
        }
        agreement = Math.min(agreement, 1.0);
        try (JsonGenerator g = JSON.createGenerator(out)) {
            g.writeStartObject();
            g.writeStringField("request_id", rid);
            g.writeStringField("strategy", STRATEGY);
            g.writeStringField("status", p.count() == M ? "complete" : "partial");
            g.writeStringField("label", LABELS[label]);
            g.writeFieldName("probs");
            g.writeArray(acc, 0, K);
            g.writeArrayFieldStart("labels");
            for (String l : LABELS) {
                g.writeString(l);
            }
            g.writeEndArray();
            g.writeNumberField("confidence", acc[label]);
            g.writeNumberField("agreement", agreement);
            g.writeObjectFieldStart("members");
            for (int j = 0; j < M; j++) {
                double[] probs = p.probs[j];
                if (probs == null) {
                    continue;
                }
                double weight = WEIGHTS[j] / total;
                g.writeObjectFieldStart(MODELS[j]);
                g.writeNumberField("weight", weight);
                g.writeStringField("label", LABELS[argmax(probs)]);
                g.writeFieldName("probs");
                g.writeArray(probs, 0, K);
                g.writeNumberField("contribution", weight * probs[label]);
                g.writeEndObject();
            }
            g.writeEndObject();
            g.writeArrayFieldStart("missing");
            for (int j = 0; j < M; j++) {
                if (p.probs[j] == null) {
                    g.writeString(MODELS[j]);
                }
            }
            g.writeEndArray();
            g.writeNumberField("first_ts", p.firstTs);
            g.writeNumberField("fused_ts", now);
            g.writeNumberField("latency_ms", now - p.openedMs);
            g.writeObjectFieldStart("model_versions");
            for (int j = 0; j < M; j++) {
                if (p.versions[j] != null) {
                    g.writeStringField(MODELS[j], p.versions[j]);
                }
            }
            g.writeEndObject();
            g.writeStringField("trace_id", p.traceId);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        byte[] bytes = out.toByteArray();
        out.reset();
        return bytes;
    }

    /** The index of the largest value, the first on ties (numpy's argmax). */
    static int argmax(double[] values) {
        int best = 0;
        for (int k = 1; k < values.length; k++) {
            if (values[k] > values[best]) {
                best = k;
            }
        }
        return best;
    }

    static int indexOf(String[] names, String name) {
        for (int i = 0; i < names.length; i++) {
            if (names[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    // -- one prediction event --------------------------------------------------------------

    /** A decoded prediction event (schemas/prediction.v1.json), probabilities in LABELS order. */
    static final class Event {
        String requestId;
        int model = -1;
        long ts = -1;
        double[] probs;
        String version;
        String traceId;

        /** The event in {@code value}; null when it is not a valid one for this join. */
        static Event parse(byte[] value, long recordTs) {
            if (value == null) {
                return null;
            }
            Event ev = new Event();
            String[] order = null;
            try (JsonParser p = JSON.createParser(value)) {
                if (p.nextToken() != JsonToken.START_OBJECT) {
                    return null;
                }
                while (p.nextToken() == JsonToken.FIELD_NAME) {
                    String name = p.currentName();
                    JsonToken t = p.nextToken();
                    switch (name) {
                        case "request_id" -> ev.requestId = t == JsonToken.VALUE_STRING ? p.getText() : null;
                        case "model" -> ev.model = t == JsonToken.VALUE_STRING ? indexOf(MODELS, p.getText()) : -1;
                        case "ts" -> {
                            if (t != JsonToken.VALUE_NUMBER_INT) {
                                return null;
                            }
                            ev.ts = p.getLongValue();
                        }
                        case "probs" -> {
                            if (t != JsonToken.START_ARRAY) {
                                return null;
                            }
                            double[] probs = new double[K];
                            int n = 0;
                            while ((t = p.nextToken()) != JsonToken.END_ARRAY) {
                                if (!t.isNumeric() || n == K) {
                                    return null;
                                }
                                probs[n++] = p.getDoubleValue();
                            }
                            if (n != K) {
                                return null;
                            }
                            ev.probs = probs;
                        }
                        case "labels" -> {
                            if (t != JsonToken.START_ARRAY) {
                                return null;
                            }
                            List<String> names = new ArrayList<>(K);
                            while ((t = p.nextToken()) == JsonToken.VALUE_STRING) {
                                names.add(p.getText());
                            }
                            if (t != JsonToken.END_ARRAY) {
                                return null;
                            }
                            order = names.toArray(new String[0]);
                        }
                        case "model_version" -> ev.version = t == JsonToken.VALUE_STRING ? p.getText() : null;
                        case "trace_id" -> ev.traceId = t == JsonToken.VALUE_STRING ? p.getText() : null;
                        default -> p.skipChildren();
                    }
                }
            } catch (IOException e) {
                return null;
            }
            if (ev.requestId == null || ev.requestId.isEmpty() || ev.model < 0 || ev.probs == null) {
                return null;
            }
            if (order != null && !reorder(ev, order)) {
                return null;
            }
            double sum = 0.0;
            for (double v : ev.probs) {
                if (!(v >= 0.0)) {
                    return null;
                }
                sum += v;
            }
            if (Math.abs(sum - 1.0) > PROB_TOLERANCE) {
                return null;
            }
            if (ev.ts < 0) {
                ev.ts = recordTs;
            }
            return ev;
        }

        /** Probabilities sent in the order {@code order} (a permutation of LABELS) put in LABELS order. */
        private static boolean reorder(Event ev, String[] order) {
            if (order.length != K) {
                return false;
            }
            double[] probs = new double[K];
            boolean[] seen = new boolean[K];
            for (int i = 0; i < K; i++) {
                int k = indexOf(LABELS, order[i]);
                if (k < 0 || seen[k]) {
                    return false;
                }
                seen[k] = true;
                probs[k] = ev.probs[i];
            }
            ev.probs = probs;
            return true;
        }
    }

    // -- a pending request, and its bytes in the store -------------------------------------

    /** The members of a request so far (null where a model has not reported). */
    static final class Pending {
        final long openedMs; // wall clock when its first event arrived
        final long firstTs; // its first event's ts
        String traceId; // the first trace_id in arrival order
        final double[][] probs = new double[M][];
        final String[] versions = new String[M];

        Pending(long openedMs, long firstTs) {
            this.openedMs = openedMs;
            this.firstTs = firstTs;
        }

        void add(Event ev) {
            probs[ev.model] = ev.probs;
            versions[ev.model] = ev.version;
            if (traceId == null) {
                traceId = ev.traceId;
            }
        }

        int count() {
            int n = 0;
            for (double[] p : probs) {
                n += p != null ? 1 : 0;
            }
            return n;
        }
    }

    /** Pending's bytes: opened, first_ts, trace id, a bit per model present, its members. */
    static final class PendingSerde {
        private PendingSerde() {}

        static Serde<Pending> serde() {
            Serializer<Pending> serializer = (topic, p) -> serialize(p);
            Deserializer<Pending> deserializer = (topic, data) -> deserialize(data);
            return Serdes.serdeFrom(serializer, deserializer);
        }

        static byte[] serialize(Pending p) {
            if (p == null) {
                return null;
            }
            byte[] trace = utf8(p.traceId);
            byte[][] versions = new byte[M][];
            int size = 8 + 8 + 4 + (trace == null ? 0 : trace.length) + 1;
            int mask = 0;
            for (int j = 0; j < M; j++) {
                if (p.probs[j] != null) {
                    mask |= 1 << j;
                    versions[j] = utf8(p.versions[j]);
                    size += 8 * K + 4 + (versions[j] == null ? 0 : versions[j].length);
                }
            }
            ByteBuffer b = ByteBuffer.allocate(size);
            b.putLong(p.openedMs).putLong(p.firstTs);
            putString(b, trace);
            b.put((byte) mask);
            for (int j = 0; j < M; j++) {
                if (p.probs[j] != null) {
                    for (double v : p.probs[j]) {
                        b.putDouble(v);
                    }
                    putString(b, versions[j]);
                }
            }
            return b.array();
        }

        static Pending deserialize(byte[] data) {
            if (data == null) {
                return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            Pending p = new Pending(b.getLong(), b.getLong());
            p.traceId = getString(b);
            int mask = b.get();
            for (int j = 0; j < M; j++) {
                if ((mask & (1 << j)) != 0) {
                    double[] probs = new double[K];
                    for (int k = 0; k < K; k++) {
                        probs[k] = b.getDouble();
                    }
                    p.probs[j] = probs;
                    p.versions[j] = getString(b);
                }
            }
            return p;
        }

        private static byte[] utf8(String s) {
            return s == null ? null : s.getBytes(StandardCharsets.UTF_8);
        }

        private static void putString(ByteBuffer b, byte[] s) {
            b.putInt(s == null ? -1 : s.length);
            if (s != null) {
                b.put(s);
            }
        }

        private static String getString(ByteBuffer b) {
            int n = b.getInt();
            if (n < 0) {
                return null;
            }
            String s = new String(b.array(), b.position(), n, StandardCharsets.UTF_8);
            b.position(b.position() + n);
            return s;
        }
    }
}
