// The login form: shows a failed attempt and keeps where to go after it.
const params = new URLSearchParams(location.search);
if (params.has('failed')) document.getElementById('failed').hidden = false;
if (params.has('limited')) document.getElementById('limited').hidden = false;
if (params.get('next') === 'term') document.getElementById('next').value = 'term';
