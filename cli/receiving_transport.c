/* receiving_transport.c: the serving side's GPU weight transport from the configuration
 * (cli.h's cli_receiving_transport), for `duel serve` and `duel bench loop`, which both serve
 * snapshots that `duel train` sends with trainer.weight_transport. */
#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "error.h"
#include "weight_transport.h"

int cli_receiving_transport(const json_t *root, const char *source, const char *redis_host,
                            int redis_port, weight_transport_options *o,
                            const weight_transport_options **out, duel_error *err) {
    const json_t *t = duel_config_section(root, "trainer");
    const json_t *kind = json_object_get(t, "weight_transport");
    const json_t *device = json_object_get(t, "transport_device");
    const json_t *world = json_object_get(t, "nccl_world_size");
    *out = NULL;
    weight_transport_default_options(o);
    if (!json_is_string(kind) || weight_transport_kind_parse(json_string_value(kind), &o->kind, NULL))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: trainer.weight_transport must be file, cuda_ipc or nccl", source);
    if (o->kind == WEIGHT_TRANSPORT_FILE) return DUEL_OK;
    if (!json_is_integer(device) || !json_is_integer(world) || json_integer_value(device) < 0 ||
        json_integer_value(world) < 2)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: trainer.transport_device (>= 0) and nccl_world_size (>= 2) must "
                              "be integers", source);
    o->role = WEIGHT_TRANSPORT_RECEIVER;
    o->redis_host = redis_host;
    o->redis_port = redis_port;
    o->device = (int)json_integer_value(device);
    o->world_size = (int)json_integer_value(world);
    o->rank = 1;
    *out = o;
    return DUEL_OK;
}
