// The page's behaviour: every form calls the JSON API of the same server with fetch, and every
// reply is shown with DOM text (never as HTML). Problems (RFC 9457) put each `errors[]` message
// next to the input it names and `detail` in the form's message area.
(function () {
  'use strict';

  var KEY_STORE = 'tracknum.api-key';
  var POLL_MS = 500;
  var FINISHED = ['done', 'failed', 'cancelled'];
  var SHOWN_ROW_ERRORS = 10;

  function $(id) {
    return document.getElementById(id);
  }

  // ---- API key: kept in this tab's sessionStorage at most, sent with every call.

  var apiKey = '';
  try {
    apiKey = sessionStorage.getItem(KEY_STORE) || '';
  } catch (e) {
    apiKey = '';
  }

  function storeKey(key) {
    apiKey = key;
    try {
      if (key) {
        sessionStorage.setItem(KEY_STORE, key);
      } else {
        sessionStorage.removeItem(KEY_STORE);
      }
    } catch (e) {
      // Storage refused (private mode): the key lives in this page only.
    }
  }

  function showKeySection() {
    $('key-section').hidden = false;
  }

  // ---- Calls

  // A call's outcome: { ok, status, body (parsed JSON or text), problem, retryAfter, response }.
  // A network failure is status 0 with a problem of our own.
  async function call(path, options) {
    options = options || {};
    var headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
    if (apiKey) {
      headers.Authorization = 'Bearer ' + apiKey;
    }
    var response;
    try {
      response = await fetch(path, {
        method: options.method || 'GET',
        headers: headers,
        body: options.body,
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch (e) {
      return {
        ok: false,
        status: 0,
        problem: { detail: 'The server could not be reached. Check the connection and try again.' },
      };
    }
    var result = {
      ok: response.ok,
      status: response.status,
      retryAfter: response.headers.get('Retry-After'),
      response: response,
    };
    if (options.raw && response.ok) {
      return result;
    }
    var type = response.headers.get('Content-Type') || '';
    var text = await response.text().catch(function () {
      return '';
    });
    if (type.indexOf('json') !== -1) {
      try {
        result.body = JSON.parse(text);
      } catch (e) {
        result.body = text;
      }
    } else {
      result.body = text;
    }
    if (!response.ok) {
      result.problem = result.body && typeof result.body === 'object' ? result.body : {};
      if (response.status === 401) {
        keysAreOn(result.problem.detail);
      }
    }
    return result;
  }

  function keysAreOn(detail) {
    showKeySection();
    clearField($('key-input'));
    markField($('key-input'), apiKey ? detail || 'The API key is not valid.' :
      'This server needs an API key: enter it here.');
  }

  // ---- Showing problems

  function errorSlot(input) {
    return $(input.id + '-error');
  }

  function clearField(input) {
    input.removeAttribute('aria-invalid');
    var slot = errorSlot(input);
    if (slot) {
      slot.textContent = '';
    }
  }

  function markField(input, message) {
    input.setAttribute('aria-invalid', 'true');
    var slot = errorSlot(input);
    if (slot) {
      slot.textContent = slot.textContent ? slot.textContent + ' ' + message : message;
    }
  }

  function clearForm(form) {
    Array.prototype.forEach.call(form.querySelectorAll('input[id], select[id]'), clearField);
    setText(form.querySelector('.message'), '');
  }

  function setText(element, text) {
    if (element) {
      element.textContent = text;
    }
  }

  function capitalized(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  // Shows a failed call on `form`: each field error next to its input (or `fallback`, the input
  // that stands for fields the form has no input for), the detail in the message area `message`.
  // Returns the first input marked, for focus.
  function showProblem(result, form, message, fallback) {
    var problem = result.problem || {};
    var first = null;
    var unplaced = [];
    (problem.errors || []).forEach(function (error) {
      var input = form ? form.elements.namedItem(error.field) : null;
      if (!(input instanceof HTMLInputElement || input instanceof HTMLSelectElement)) {
        input = fallback || null;
      }
      if (input) {
        var text = capitalized(error.message);
        if (input.name !== error.field) {
          text = error.field + ': ' + error.message;
        }
        markField(input, text);
        first = first || input;
      } else {
        unplaced.push(error.field + ': ' + error.message);
      }
    });
    var detail = problem.detail || problem.title || 'The server answered ' + result.status + '.';
    if (result.status === 401) {
      detail = 'This server needs an API key: enter it in the API key field above.';
      first = first || $('key-input');
    }
    if (result.status === 413) {
      detail = 'Too large: ' + (problem.detail || 'the server refused a body this big.');
      if (fallback) {
        markField(fallback, detail);
        first = first || fallback;
      }
    }
    if ((result.status === 429 || result.status === 503) && result.retryAfter) {
      detail += ' Try again in ' + result.retryAfter + ' s.';
    }
    if (unplaced.length) {
      detail += ' (' + unplaced.join('; ') + ')';
    }
    setText(message, detail);
    return first;
  }

  function busy(form, on) {
    form.setAttribute('aria-busy', on ? 'true' : 'false');
    Array.prototype.forEach.call(form.querySelectorAll('button'), function (button) {
      button.disabled = on;
    });
  }

  // ---- Rendering values

  function definitionList(pairs) {
    var list = document.createElement('dl');
    list.className = 'record';
    pairs.forEach(function (pair) {
      var term = document.createElement('dt');
      term.textContent = pair[0];
      var value = document.createElement('dd');
      value.textContent = pair[1];
      list.append(term, value);
    });
    return list;
  }

  var RECORD_LABELS = [
    ['status', 'Status'],
    ['origin_country_id', 'Origin country'],
    ['destination_country_id', 'Destination country'],
    ['weight', 'Weight (kg)'],
    ['order_created_at', 'Order time'],
    ['customer_id', 'Customer id'],
    ['customer_name', 'Customer name'],
    ['customer_slug', 'Customer slug'],
    ['tenant', 'Tenant'],
    ['created_at', 'Issued at'],
    ['updated_at', 'Updated at'],
    ['expires_at', 'Expires at'],
  ];

  function renderRecord(target, heading, record) {
    var title = document.createElement('p');
    title.className = 'result-title';
    title.textContent = heading;
    var number = document.createElement('p');
    number.className = 'number';
    number.textContent = record.tracking_number;
    var pairs = [];
    RECORD_LABELS.forEach(function (entry) {
      if (record[entry[0]] !== undefined && record[entry[0]] !== null) {
        pairs.push([entry[1], String(record[entry[0]])]);
      }
    });
    target.replaceChildren(title, number, definitionList(pairs));
  }

  function yesNo(value) {
    return value ? 'yes' : 'no';
  }

  function renderCheck(target, number, check) {
    var title = document.createElement('p');
    title.className = 'result-title';
    title.textContent = 'What the number says';
    var shown = document.createElement('p');
    shown.className = 'number';
    shown.textContent = number.toUpperCase();
    target.replaceChildren(
      title,
      shown,
      definitionList([
        ['Layout valid', yesNo(check.format_valid)],
        ['Check character valid', yesNo(check.check_character_valid)],
        ['Origin country', check.origin_country_id || '(none)'],
        ['Customer tag', check.customer_tag || '(none)'],
        ['Record exists', yesNo(check.record_exists)],
      ])
    );
  }

  // ---- Issue a number

  $('issue-form').addEventListener('submit', async function (event) {
    event.preventDefault();
    var form = event.currentTarget;
    clearForm(form);
    var params = new URLSearchParams();
    Array.prototype.forEach.call(form.querySelectorAll('input[name]'), function (input) {
      var value = input.value.trim();
      if (value) {
        params.append(input.name, value);
      }
    });
    var query = params.toString();
    busy(form, true);
    var result = await call('/v1/next-tracking-number' + (query ? '?' + query : ''));
    busy(form, false);
    if (result.ok) {
      renderRecord($('issue-result'), 'New tracking number', result.body);
      return;
    }
    $('issue-result').replaceChildren();
    var first = showProblem(result, form, $('issue-message'));
    if (first) {
      first.focus();
    }
  });

  // ---- Look up or check a number

  $('lookup-form').addEventListener('submit', async function (event) {
    event.preventDefault();
    var form = event.currentTarget;
    var check = event.submitter && event.submitter.value === 'check';
    var input = $('lookup-tracking_number');
    clearForm(form);
    var number = input.value.trim();
    if (!number) {
      markField(input, 'Enter a tracking number.');
      input.focus();
      return;
    }
    var path = '/v1/tracking-numbers/' + encodeURIComponent(number) + (check ? '/check' : '');
    busy(form, true);
    var result = await call(path);
    busy(form, false);
    var target = $('lookup-result');
    if (result.ok) {
      if (check) {
        renderCheck(target, number, result.body);
      } else {
        renderRecord(target, 'Record', result.body);
      }
      return;
    }
    target.replaceChildren();
    var first = showProblem(result, form, $('lookup-message'));
    if (first) {
      first.focus();
    }
  });

  // ---- Import a CSV file, and watch a job

  // The job on show; a poll for another job, or one that was replaced, stops.
  var watched = null;

  $('import-form').addEventListener('submit', async function (event) {
    event.preventDefault();
    var form = event.currentTarget;
    var fileInput = $('import-file');
    clearForm(form);
    var file = fileInput.files[0];
    if (!file) {
      markField(fileInput, 'Choose a CSV file to upload.');
      fileInput.focus();
      return;
    }
    var params = new URLSearchParams();
    if ($('import-delimiter').value) {
      params.append('delimiter', $('import-delimiter').value);
    }
    if ($('import-dry_run').checked) {
      params.append('dry_run', 'true');
    }
    var query = params.toString();
    var path = '/v1/imports' + (query ? '?' + query : '');
    busy(form, true);
    var result = await call(path, {
      method: 'POST',
      body: file,
      headers: { 'Content-Type': 'text/csv' },
    });
    busy(form, false);
    if (result.ok && result.body && result.body.id) {
      watch(result.body, true);
      loadRecent();
      return;
    }
    var first = showProblem(result, form, $('import-message'), fileInput);
    if (first) {
      first.focus();
    }
  });

  function isFinished(job) {
    return FINISHED.indexOf(job.status) !== -1;
  }

  function watch(job, announce) {
    watched = { id: job.id, status: null };
    setText($('job-message'), '');
    $('job').hidden = false;
    renderJob(job);
    if (announce) {
      $('job').scrollIntoView({ block: 'nearest' });
    }
    if (!isFinished(job)) {
      schedulePoll(watched, POLL_MS);
    }
  }

  function schedulePoll(token, delay) {
    setTimeout(function () {
      poll(token);
    }, delay);
  }

  async function poll(token) {
    if (token !== watched) {
      return;
    }
    var result = await call('/v1/imports/' + encodeURIComponent(token.id));
    if (token !== watched) {
      return;
    }
    if (result.ok) {
      setText($('job-message'), '');
      renderJob(result.body);
      if (isFinished(result.body)) {
        loadRecent();
      } else {
        schedulePoll(token, POLL_MS);
      }
      return;
    }
    showProblem(result, null, $('job-message'));
    if (result.status === 404 || result.status === 401) {
      return;
    }
    // Busy, throttled or unreachable: keep watching, more slowly.
    var wait = Number(result.retryAfter) > 0 ? Number(result.retryAfter) * 1000 : 2000;
    schedulePoll(token, wait);
  }

  function count(value) {
    return typeof value === 'number' ? value : 0;
  }

  function renderJob(job) {
    var rows = job.rows || {};
    var total = count(rows.total);
    var processed = count(rows.processed);
    var progress = $('job-progress');
    progress.max = Math.max(total, 1);
    progress.value = job.status === 'done' ? progress.max : Math.min(processed, progress.max);

    $('job').setAttribute('data-status', job.status);
    setText($('job-id'), job.id);
    var badge = $('job-status');
    badge.textContent = job.status + (job.dry_run ? ' (dry run)' : '');
    badge.className = 'badge status-' + job.status;

    var made = job.dry_run ? count(rows.valid) + ' valid' : count(rows.issued) + ' issued';
    var summary = processed + ' of ' + total + ' rows processed: ' + made + ', ' +
      count(rows.rejected) + ' rejected.';
    setText($('job-summary'), summary);
    if (watched && watched.status !== job.status) {
      watched.status = job.status;
      setText($('job-announce'), 'Import ' + job.status + '. ' + summary);
    }

    setText($('job-failure'), job.status === 'failed' ? job.failure || 'The import failed.' : '');

    var errors = job.errors || [];
    var list = $('job-error-list');
    var items = errors.slice(0, SHOWN_ROW_ERRORS).map(function (error) {
      var item = document.createElement('li');
      item.textContent = 'Row ' + error.row + ', ' + error.field + ': ' + error.message;
      return item;
    });
    if (errors.length > items.length) {
      var rest = document.createElement('li');
      rest.textContent = 'and more: the results file has every row\'s errors.';
      items.push(rest);
    }
    list.replaceChildren.apply(list, items);
    $('job-errors').hidden = items.length === 0;

    var download = $('job-download');
    // A cancelled or failed job's results hold the rows it got to.
    download.hidden = !isFinished(job);
    download.setAttribute('data-job', job.id);
  }

  $('job-download').addEventListener('click', async function (event) {
    var button = event.currentTarget;
    var id = button.getAttribute('data-job');
    setText($('job-message'), '');
    button.disabled = true;
    var result = await call('/v1/imports/' + encodeURIComponent(id) + '/results', {
      raw: true,
      headers: { Accept: 'text/csv' },
    });
    if (!result.ok) {
      button.disabled = false;
      showProblem(result, null, $('job-message'));
      return;
    }
    var blob = await result.response.blob();
    button.disabled = false;
    var url = URL.createObjectURL(blob);
    var link = document.createElement('a');
    link.href = url;
    link.download = 'tracknum-import-' + String(id).replace(/[^A-Za-z0-9_-]/g, '_') + '.csv';
    document.body.append(link);
    link.click();
    link.remove();
    // The browser reads the blob when the download starts; free it a while later.
    setTimeout(function () {
      URL.revokeObjectURL(url);
    }, 60000);
  });

  // ---- Recent imports

  // Only the latest listing asked for is shown, whatever order the replies come in. `older`
  // is where the next page starts (`next` of the last one), null on the last page.
  var recentAsked = 0;
  var older = null;

  async function loadRecent(more) {
    var asked = ++recentAsked;
    var query = 'limit=20' + (more && older ? '&before=' + encodeURIComponent(older) : '');
    var result = await call('/v1/imports?' + query);
    if (asked !== recentAsked) {
      return;
    }
    var list = $('recent-list');
    if (!result.ok) {
      showProblem(result, null, $('recent-message'));
      return;
    }
    setText($('recent-message'), '');
    var jobs = (result.body && result.body.imports) || [];
    var items = jobs.map(recentItem);
    if (more) {
      list.append.apply(list, items);
    } else {
      list.replaceChildren.apply(list, items);
    }
    older = (result.body && result.body.next) || null;
    $('recent-older').hidden = !older;
    $('recent-empty').hidden = list.children.length > 0;
  }

  function recentItem(job) {
    var rows = job.rows || {};
    var item = document.createElement('li');
    var button = document.createElement('button');
    button.type = 'button';
    button.className = 'recent-job';
    var id = document.createElement('code');
    id.textContent = job.id;
    var status = document.createElement('span');
    status.className = 'badge status-' + job.status;
    status.textContent = job.status + (job.dry_run ? ' (dry run)' : '');
    var counts = document.createElement('span');
    var made = job.dry_run ? count(rows.valid) + ' valid' : count(rows.issued) + ' issued';
    counts.textContent = count(rows.total) + ' rows, ' + made + ', ' + count(rows.rejected) +
      ' rejected';
    var when = document.createElement('time');
    when.dateTime = job.created_at;
    var date = new Date(job.created_at);
    when.textContent = isNaN(date.getTime()) ? String(job.created_at) : date.toLocaleString();
    button.append(id, status, counts, when);
    button.addEventListener('click', function () {
      watch(job, true);
      $('job').focus();
    });
    item.append(button);
    return item;
  }

  $('recent-refresh').addEventListener('click', function () {
    loadRecent(false);
  });
  $('recent-older').addEventListener('click', function () {
    loadRecent(true);
  });

  // ---- The key form

  $('key-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var input = $('key-input');
    clearField(input);
    var key = input.value.trim();
    if (!key) {
      markField(input, 'Enter the API key.');
      input.focus();
      return;
    }
    storeKey(key);
    setText($('key-message'), 'The key is in use for this tab.');
    loadRecent();
  });

  $('key-forget').addEventListener('click', function () {
    storeKey('');
    $('key-input').value = '';
    clearField($('key-input'));
    setText($('key-message'), 'The key is forgotten.');
  });

  // ---- Start: show a stored key, and list recent imports (which also finds out whether the
  // server needs a key).

  $('key-input').value = apiKey;
  if (apiKey) {
    showKeySection();
  }
  loadRecent();
})();
