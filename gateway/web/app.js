// app.js: the chat page's client for the duel.v1 websocket protocol (DESIGN.md section 7).
// One socket; hello (resuming the stored conversation id), ask, two answers streamed side by
// side, a vote (buttons or keys 1-4), the chosen answer folded into the conversation.
// Reconnects with backoff and resumes the conversation. No framework.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'), log: $('log'), duel: $('duel'), progress: $('progress'),
    textA: $('text-a'), textB: $('text-b'), answerA: $('answer-a'), answerB: $('answer-b'),
    notice: $('notice'), testBackend: $('test-backend'), form: $('ask-form'), input: $('ask-text'), send: $('send'),
    cancel: $('cancel'), newConv: $('new-conversation'),
    votes: Array.from(document.querySelectorAll('.votes button')),
  };
  const STORE_KEY = 'duel.conversation';
  const ERROR_TEXT = {
    rate_limited: 'You are sending questions quickly; please wait a moment.',
    address_rate_limited: 'Many questions are coming from your network; please wait a moment.',
    too_many_pending: 'Your network has several questions waiting for answers; please wait for them.',
    busy: 'Still answering your last question.',
    turn_limit: 'This conversation is full. Start a new one.',
    too_many_connections: 'Too many open tabs from your address.',
    shutting_down: 'The server is restarting; reconnecting shortly.',
    engine_error: 'The model could not answer. Please try again.',
    vote_failed: 'Your vote could not be saved. Please vote again in a moment.',
    too_large: 'That message is too long.',
    text_too_long: 'That message is too long.',
  };

  let ws = null;
  let backoff = 500;
  let conversation = localStorage.getItem(STORE_KEY) || null;
  // The browser's stable id (32 hex digits, kept across conversations and visits): the A/B
  // rollout hashes it to an arm, so a user keeps the arm on every gateway.
  const CLIENT_KEY = 'duel.client';
  let client = localStorage.getItem(CLIENT_KEY);
  if (!/^[0-9a-f]{32}$/.test(client || '')) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    client = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    localStorage.setItem(CLIENT_KEY, client);
  }
  let current = null; // {id, question, turn, finished, voted, pending}
  let welcomed = false; // the server answered this socket's hello
  let limits = null;

  function setStatus(text, online) {
    el.status.textContent = text;
    el.status.className = 'status ' + (online ? 'online' : 'offline');
  }

  function showNotice(text, kind) {
    el.notice.textContent = text;
    el.notice.className = 'notice' + (kind === 'info' ? ' info' : '');
    el.notice.hidden = !text;
  }

  // A notice with one action button (the new-conversation offer).
  function showOffer(text, label, action) {
    showNotice(text);
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'offer';
    b.textContent = label;
    b.addEventListener('click', action);
    el.notice.append(' ', b);
  }

  function addTurn(user, assistant) {
    const turn = document.createElement('div');
    turn.className = 'turn';
    const u = document.createElement('div');
    u.className = 'bubble user';
    u.setAttribute('aria-label', 'You');
    u.textContent = user;
    turn.appendChild(u);
    if (assistant !== null) {
      const a = document.createElement('div');
      a.className = 'bubble assistant';
      a.setAttribute('aria-label', 'Assistant');
      a.textContent = assistant;
      turn.appendChild(a);
    }
    el.log.appendChild(turn);
    turn.scrollIntoView({block: 'end'});
    return turn;
  }

  function setBusy(busy) {
    el.send.disabled = busy;
    el.cancel.hidden = !busy;
  }

  function setVotesEnabled(on) {
    for (const b of el.votes) b.disabled = !on;
  }

  function resetDuel() {
    current = null;
    el.duel.hidden = true;
    el.textA.textContent = '';
    el.textB.textContent = '';
    el.answerA.classList.remove('chosen');
    el.answerB.classList.remove('chosen');
    el.progress.textContent = '';
    el.progress.classList.remove('busy');
    setVotesEnabled(false);
    setBusy(false);
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(obj));
      return true;
    }
    showNotice('Not connected. Reconnecting…');
    return false;
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    setStatus(ws ? 'Reconnecting…' : 'Connecting…', false);
    // ?client= is for a load balancer in front of several gateways (ops/lb hashes it): every
    // socket of this browser reaches the gateway that holds its unvoted duels. Gateways ignore it.
    ws = new WebSocket(`${proto}//${location.host}/?client=${client}`, 'duel.v1');
    ws.onopen = () => {
      backoff = 500;
      const hello = {type: 'hello', client};
      if (conversation) hello.conversation = conversation;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      handle(msg);
    };
    ws.onclose = () => {
      welcomed = false;
      setStatus('Offline — reconnecting…', false);
      if (current && !current.finished && !current.pending) {
        // The server cancels a duel whose socket closed; the question can be asked again.
        showNotice('Connection lost while answering. Reconnecting; please ask again.');
        el.input.value = el.input.value || current.question;
        if (current.turn) current.turn.remove();
        resetDuel();
      }
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 8000);
    };
  }

  function handle(msg) {
    switch (msg.type) {
    case 'welcome': {
      setStatus('Connected', true);
      limits = msg.limits;
      el.testBackend.hidden = msg.test_backend !== true;
      if (limits && limits.max_ask_bytes) el.input.maxLength = limits.max_ask_bytes;
      if (msg.conversation !== conversation || !msg.resumed) {
        el.log.textContent = '';
      }
      if (msg.conversation !== conversation && conversation && !msg.resumed)
        showNotice('Your earlier conversation has expired; this is a new one.', 'info');
      conversation = msg.conversation;
      localStorage.setItem(STORE_KEY, conversation);
      if (el.log.childElementCount === 0)
        for (const t of msg.history || []) addTurn(t.user, t.assistant);
      welcomed = true;
      if (current && current.pending) sendPending();
      break;
    }
    case 'progress':
      if (!current) return;
      current.id = msg.duel;
      el.progress.textContent = `Writing several answers… ${msg.tokens} tokens so far`;
      break;
    case 'duel_start':
      if (!current) return;
      current.id = msg.duel;
      el.progress.classList.remove('busy');
      el.progress.textContent = 'Two answers are arriving. Which is better?';
      // The model reads only so much: the server left the oldest turns out of this question.
      if (msg.dropped_turns > 0) {
        const n = msg.dropped_turns;
        showNotice(`This conversation is longer than the model can read: the first ${n} ` +
          `turn${n === 1 ? ' was' : 's were'} left out of this answer.`, 'info');
      }
      break;
    case 'delta':
      if (!current || msg.duel !== current.id) return;
      (msg.side === 'a' ? el.textA : el.textB).textContent += msg.text;
      break;
    case 'duel_end':
      if (!current || msg.duel !== current.id) return;
      if (msg.cancelled) {
        if (current.turn) current.turn.remove();
        el.input.value = el.input.value || current.question;
        resetDuel();
        showNotice('Stopped.', 'info');
        return;
      }
      current.finished = true;
      setBusy(false);
      el.progress.textContent = 'Pick the better answer (keys 1–4).';
      setVotesEnabled(true);
      el.votes[0].focus();
      break;
    case 'vote_ok': {
      if (!current || msg.duel !== current.id) return;
      const c = current;
      const text = c.choice === 'b' ? el.textB.textContent : el.textA.textContent;
      if (c.turn) c.turn.remove();
      addTurn(c.question, text);
      const thanks = c.choice === 'tie' || c.choice === 'both_bad'
        ? 'Thanks! Answer A was kept; you can ask again for a better one.'
        : 'Thanks for your vote!';
      resetDuel();
      showNotice(msg.queued ? thanks + ' (saved; it will be delivered shortly)' : thanks, 'info');
      el.input.focus();
      break;
    }
    case 'error':
      handleError(msg);
      break;
    }
  }

  function handleError(msg) {
    const text = ERROR_TEXT[msg.code] || `Error: ${msg.message || msg.code}`;
    if (msg.code === 'conversation_too_long') {
      // Nothing temporary: the message (with what came before) is more than the model reads.
      showOffer('That message is too long for the model to read. Shorten it, or start a new ' +
        'conversation.', 'Start a new conversation', () => el.newConv.click());
    } else {
      showNotice(text);
    }
    if (current && !current.finished && ['busy', 'rate_limited', 'address_rate_limited', 'too_many_pending', 'turn_limit',
        'conversation_too_long', 'engine_error', 'shutting_down'].includes(msg.code)) {
      if (current.turn) current.turn.remove();
      if (!el.input.value) el.input.value = current.question;
      resetDuel();
    }
    if (current && current.finished && msg.code === 'vote_failed') {
      current.voted = false;
      setVotesEnabled(true);
    }
  }

  // A question asked while the connection is down waits in `current` (pending) and goes out
  // as soon as the server has welcomed the new socket.
  function ask(text) {
    if (current && !current.finished) return;
    if (current && current.finished && !current.voted) {
      showNotice('Please vote on the two answers first (or start a new conversation).');
      return;
    }
    const online = welcomed && ws && ws.readyState === WebSocket.OPEN;
    resetDuel();
    current = {id: null, question: text, finished: false, voted: false, pending: !online};
    current.turn = addTurn(text, null);
    el.duel.hidden = false;
    el.progress.classList.add('busy');
    setBusy(true);
    el.input.value = '';
    if (online) {
      sendPending();
    } else {
      el.progress.textContent = 'Waiting for the connection…';
      showNotice('Not connected. Your question will be sent when the connection is back.', 'info');
    }
  }

  function sendPending() {
    current.pending = false;
    if (!current.turn.isConnected) current.turn = addTurn(current.question, null); // the log was redrawn
    el.progress.textContent = 'Thinking…';
    showNotice('');
    send({type: 'ask', text: current.question});
  }

  function vote(choice) {
    if (!current || !current.finished || current.voted) return;
    if (!send({type: 'vote', duel: current.id, choice})) return;
    current.voted = true;
    current.choice = choice;
    setVotesEnabled(false);
    (choice === 'b' ? el.answerB : el.answerA).classList.add('chosen');
    el.progress.textContent = 'Saving your vote…';
  }

  el.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = el.input.value.trim();
    if (text) ask(text);
  });
  el.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.form.requestSubmit();
    }
  });
  el.cancel.addEventListener('click', () => {
    if (current && current.pending) { // never sent: take it back
      current.turn.remove();
      el.input.value = el.input.value || current.question;
      resetDuel();
      showNotice('');
      return;
    }
    send({type: 'cancel'});
  });
  for (const b of el.votes) b.addEventListener('click', () => vote(b.dataset.choice));
  document.addEventListener('keydown', (e) => {
    if (e.target === el.input || e.ctrlKey || e.metaKey || e.altKey) return;
    const choice = {'1': 'a', '2': 'b', '3': 'tie', '4': 'both_bad'}[e.key];
    if (choice && current && current.finished && !current.voted) {
      e.preventDefault();
      vote(choice);
    }
  });
  el.newConv.addEventListener('click', () => {
    localStorage.removeItem(STORE_KEY);
    conversation = null;
    el.log.textContent = '';
    resetDuel();
    showNotice('');
    if (ws) ws.close(); // reconnects with a fresh hello
    el.input.focus();
  });

  resetDuel();
  connect();
})();
