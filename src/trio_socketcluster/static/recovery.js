/*
 * recovery.js: channel recovery for the stock SocketCluster JavaScript clients
 * (socketcluster-client v14 and v19/v20) talking to a trio-socketcluster server.
 *
 * On a channel with history the server puts `offset` and `epoch` in every `#publish`, and a
 * `#subscribe` whose data is `{recover: {offset, epoch}}` gets every publication missed since
 * that offset before the live ones (no gap, no duplicate), or, when that is no longer
 * possible, the acknowledgement `{recovered: false, offset, epoch}` and the live ones only.
 *
 * The stock clients resend a channel's subscribe `data` on every resubscribe (after each
 * reconnect), the same object each time: v14 keeps it as `channel.data`, v20 as the
 * channel's `options.data`. They also expose every raw inbound message. This helper reads
 * the `#publish` messages, keeps the last `{offset, epoch}` per channel, and writes it into
 * the subscribe data object it gave you, so every resubscribe asks to recover.
 *
 * Usage, v14 (socketcluster-client 14.x):
 *
 *     const recovery = SCRecovery.create();    // browser: after <script src="recovery.js">
 *     // Node: require('./recovery.js').create(), a copy of the file that ships in the
 *     // Python package as trio_socketcluster/static/recovery.js
 *     socket.on('message', recovery.onMessage);
 *     const channel = socket.subscribe('news', {data: recovery.data('news')});
 *     channel.watch((data) => { ... });
 *
 * Usage, v20 (socketcluster-client 19.x/20.x):
 *
 *     const recovery = SCRecovery.create();
 *     (async () => {
 *       for await (const {message} of socket.listener('message')) recovery.onMessage(message);
 *     })();
 *     const channel = socket.subscribe('news', {data: recovery.data('news')});
 *     for await (const data of channel) { ... }
 *
 * Subscribe with the object `recovery.data(name, extra)` returns, and do not replace it:
 * `extra` holds your own subscribe data fields (copied in; `recover` is ours). Start
 * listening to raw messages before subscribing. The channel name is the one you subscribe
 * with; if the socket has a `channelPrefix`, pass it: `SCRecovery.create({channelPrefix})`.
 *
 * `recovery.position(name)` is the last `{offset, epoch}` seen (or null); `recovery.forget(name)`
 * drops it (after an unsubscribe for good). `recovery.seek(name, {offset, epoch})` sets the
 * position from elsewhere (a history fetched over RPC, a saved position), so that the next
 * subscribe asks for what came after it; within an epoch the position never moves back.
 * `SCRecovery.create({onPublication})` also calls `onPublication(name, {data, offset, epoch})`
 * for every publication with a position, in the order received (offsets let an application
 * merge live publications with a fetched history without duplicates). The helper does not read the subscribe
 * acknowledgement (the stock clients do not hand its data to the application), so after a
 * failed recovery it learns the new epoch from the next publication: until then a
 * resubscribe asks with the old position and simply gets `recovered: false` again.
 *
 * Pure apart from reading the messages it is given: no timers, no network, no globals other
 * than the `SCRecovery` export in a browser.
 */
(function (root, factory) {
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.SCRecovery = factory();
  }
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  function isPosition(offset, epoch) {
    return Number.isSafeInteger(offset) && offset >= 0 && typeof epoch === 'string' && epoch !== '';
  }

  function create(options) {
    const prefix = (options && options.channelPrefix) || '';
    const onPublication = (options && options.onPublication) || null;
    const datas = new Map(); // channel name -> the subscribe data object handed out
    const positions = new Map(); // channel name -> {offset, epoch}

    function update(name, offset, epoch) {
      const known = positions.get(name);
      if (known && known.epoch === epoch && known.offset >= offset) return;
      const position = {offset: offset, epoch: epoch};
      positions.set(name, position);
      const data = datas.get(name);
      if (data) data.recover = {offset: offset, epoch: epoch};
    }

    function onPacket(packet) {
      if (!packet || packet.event !== '#publish') return;
      const d = packet.data;
      if (!d || typeof d.channel !== 'string' || !isPosition(d.offset, d.epoch)) return;
      let name = d.channel;
      if (prefix) {
        if (!name.startsWith(prefix)) return;
        name = name.slice(prefix.length);
      }
      update(name, d.offset, d.epoch);
      if (onPublication) onPublication(name, {data: d.data, offset: d.offset, epoch: d.epoch});
    }

    function seek(name, position) {
      if (!position || !isPosition(position.offset, position.epoch)) return;
      update(name, position.offset, position.epoch);
    }

    function onMessage(message) {
      if (typeof message !== 'string') {
        if (message == null) return;
        message = String(message);
      }
      if (message.indexOf('#publish') === -1) return; // pings, responses, other events
      let parsed;
      try {
        parsed = JSON.parse(message);
      } catch (e) {
        return;
      }
      if (Array.isArray(parsed)) {
        for (let i = 0; i < parsed.length; i++) onPacket(parsed[i]);
      } else {
        onPacket(parsed);
      }
    }

    function data(name, extra) {
      let obj = datas.get(name);
      if (!obj) {
        obj = {};
        datas.set(name, obj);
      }
      if (extra) {
        for (const key of Object.keys(extra)) {
          if (key !== 'recover') obj[key] = extra[key];
        }
      }
      const known = positions.get(name);
      if (known) obj.recover = {offset: known.offset, epoch: known.epoch};
      return obj;
    }

    function position(name) {
      const known = positions.get(name);
      return known ? {offset: known.offset, epoch: known.epoch} : null;
    }

    function forget(name) {
      positions.delete(name);
      const obj = datas.get(name);
      if (obj) delete obj.recover;
      datas.delete(name);
    }

    return {onMessage: onMessage, data: data, position: position, forget: forget, seek: seek};
  }

  return {create: create};
});
