/* receiving_transport.c: the serving end of trainer.weight_transport for `duel serve` and
 * `duel bench loop` (cli.h): a receiver of trainer/weight_transport_model.h, handed to the
 * engine adapter as its snapshot loader (gateway/duel_backend.h), so that the gateway, which does
 * not link the trainer, takes snapshots that `duel train` sends through cuda_ipc or nccl. */
#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "error.h"
#include "weight_transport.h"
#include "weight_transport_model.h"

int cli_snapshot_receiver_open(const json_t *root, const char *source, const char *redis_host,
                               int redis_port, weight_transport_model_receiver **out,
                               duel_error *err) {
    const json_t *t = duel_config_section(root, "trainer");
    const json_t *kind = json_object_get(t, "weight_transport");
    const json_t *device = json_object_get(t, "transport_device");
    const json_t *world = json_object_get(t, "nccl_world_size");
    *out = NULL;
    weight_transport_options o;
    weight_transport_default_options(&o);
    if (!json_is_string(kind) || weight_transport_kind_parse(json_string_value(kind), &o.kind, NULL))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: trainer.weight_transport must be file, cuda_ipc or nccl", source);
    if (o.kind == WEIGHT_TRANSPORT_FILE) return DUEL_OK;
    if (!json_is_integer(device) || !json_is_integer(world) || json_integer_value(device) < 0 ||
        json_integer_value(world) < 2)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: trainer.transport_device (>= 0) and nccl_world_size (>= 2) must "
                              "be integers", source);
    o.redis_host = redis_host;
    o.redis_port = redis_port;
    o.device = (int)json_integer_value(device);
    o.world_size = (int)json_integer_value(world);
    o.rank = 1;
    return weight_transport_model_receiver_create(&o, out, err);
}

int cli_snapshot_receiver_load(void *ctx, long long version, const char *dir, model **out,
                               duel_error *err) {
    return weight_transport_model_load(ctx, version, dir, out, err);
}

const char *cli_snapshot_receiver_via(const weight_transport_model_receiver *r) {
    return r ? weight_transport_model_kind(r) : NULL;
}
