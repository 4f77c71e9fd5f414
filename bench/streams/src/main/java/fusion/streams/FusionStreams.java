package fusion.streams;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams contestant of bench/throughput.py: the worker's join and soft-vote
 * fusion ({@link FusionJoin}) as a Processor API application.
 *
 * <p>Usage: {@code java -jar fusion-streams.jar BOOTSTRAP INPUT OUTPUT APPLICATION_ID
 * at_least_once|exactly_once_v2}. INPUT may name several topics, comma-separated. Runs until
 * SIGTERM, then closes (committing what it processed); exits 1 if the application fails.
 */
public final class FusionStreams {
    private FusionStreams() {}

    /** The topology: input -> join (with its store) -> output. */
    static Topology topology(String[] inputs, String output) {
        Topology topology = new Topology();
        topology.addSource("predictions", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), inputs);
        topology.addProcessor("join", FusionJoin::new, "predictions");
        // In memory, as the worker's pending requests, with Kafka Streams' changelog and
        // record cache (the DSL's defaults): at each commit the changelog gets the requests
        // still pending and a tombstone for each one fused since, not every member's put.
        topology.addStateStore(
                Stores.keyValueStoreBuilder(
                                Stores.inMemoryKeyValueStore(FusionJoin.STORE),
                                Serdes.String(),
                                FusionJoin.PendingSerde.serde())
                        .withCachingEnabled(),
                "join");
        topology.addSink("fused", output, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "join");
        return topology;
    }

    /** The worker's settings where it has one; Kafka Streams' defaults for the rest. */
    static Properties config(String bootstrap, String applicationId, String guarantee) {
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        // The worker's commit intervals: 1000 ms at-least-once, 100 ms exactly-once.
        props.put(
                StreamsConfig.COMMIT_INTERVAL_MS_CONFIG,
                StreamsConfig.EXACTLY_ONCE_V2.equals(guarantee) ? 100 : 1000);
        // The worker is one Python thread.
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        return props;
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 5
                || !(StreamsConfig.AT_LEAST_ONCE.equals(args[4]) || StreamsConfig.EXACTLY_ONCE_V2.equals(args[4]))) {
            System.err.println("usage: java -jar fusion-streams.jar BOOTSTRAP INPUT OUTPUT APPLICATION_ID"
                    + " at_least_once|exactly_once_v2");
            System.exit(2);
        }
        KafkaStreams streams =
                new KafkaStreams(topology(args[1].split(","), args[2]), config(args[0], args[3], args[4]));
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean terminating = new AtomicBoolean(false);
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                // bench/latency.py starts its load when it reads this line.
                System.out.println("state RUNNING");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            terminating.set(true);
            streams.close(Duration.ofSeconds(20));
            try {
                streams.cleanUp(); // the local state directory: nothing restarts from it
            } catch (IllegalStateException e) {
                System.err.println("not closed within 20 s: local state left in place");
            }
            stopped.countDown();
        }, "shutdown"));
        streams.start();
        stopped.await();
        if (!terminating.get()) {
            System.err.println("Kafka Streams stopped on its own (state " + streams.state() + ")");
            System.exit(1); // the shutdown hook closes it
        }
    }
}
